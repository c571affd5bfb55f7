"""Pictures of anomaly maps: heat-map colouring, overlays and a colour bar (Pillow only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# Anchor colours of the "inferno"-like ramp used for heat maps (value 0 -> 1).
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
     [250, 193, 39], [252, 255, 164]], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map ``[H, W]`` values in ``[0, 1]`` to ``[H, W, 3]`` uint8 heat-map colours."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(np.int32)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    t = (v - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - t) + _RAMP[hi] * t).astype(np.uint8)


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """Boolean ``[H, W]`` outline (one pixel wide, inside) of a binary mask."""
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool))


def overlay_panel(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None,
                  vmin: float, vmax: float, title: str = "") -> Image.Image:
    """One picture: image | heat map over the image | image with ground-truth contour, + bar.

    Args:
      image: ``[H, W, 3]`` float in ``[0, 1]``.
      heat: ``[H, W]`` raw anomaly map.
      mask: ``[H, W]`` 0/1 ground truth, or ``None``.
      vmin, vmax: score range mapped to the ends of the colour bar.
      title: text drawn above the panels (e.g. file name and image score).
    """
    rgb = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    scaled = (heat - vmin) / max(vmax - vmin, 1e-12)
    heat_rgb = colorize(scaled)
    blended = np.round(0.5 * rgb + 0.5 * heat_rgb).astype(np.uint8)
    contoured = rgb.copy()
    if mask is not None:
        edge = ndimage.binary_dilation(mask_contour(mask), iterations=max(1, rgb.shape[0] // 256))
        contoured[edge] = (0, 255, 0)
        blended[edge] = (0, 255, 0)
    h, w = rgb.shape[:2]
    bar_w, margin, top = 14, 60, 18
    canvas = Image.new("RGB", (3 * w + bar_w + margin, h + top), (255, 255, 255))
    for i, panel in enumerate((rgb, blended, contoured)):
        canvas.paste(Image.fromarray(panel), (i * w, top))
    bar = colorize(np.linspace(1, 0, h)[:, None].repeat(bar_w, axis=1))
    canvas.paste(Image.fromarray(bar), (3 * w + 4, top))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((2, 2), title, fill=(0, 0, 0), font=font)
    draw.text((3 * w + bar_w + 6, top), f"{vmax:.3g}", fill=(0, 0, 0), font=font)
    draw.text((3 * w + bar_w + 6, top + h - 12), f"{vmin:.3g}", fill=(0, 0, 0), font=font)
    return canvas


def save_heatmap(path: Path, heat: np.ndarray, vmin: float, vmax: float) -> None:
    """Write a coloured ``[H, W]`` heat map as PNG."""
    Image.fromarray(colorize((heat - vmin) / max(vmax - vmin, 1e-12))).save(path)
