"""The embedded synthetic dataset: MVTec-style categories generated from a seed.

Four categories, three textures and one object, each image drawn with random pose,
lighting and material variation so that normal images differ from one another:

* ``fabric`` (plain-weave textile): defects ``hole``, ``stain``, ``misweave``, ``dye``.
* ``metal`` (brushed steel sheet): defects ``scratch``, ``dent``, ``rust``, ``pits``.
* ``wood`` (planed board with growth rings): defects ``crack``, ``wormholes``, ``stain``,
  ``bleach``.
* ``nut`` (hex nut on a conveyor belt): defects ``missing``, ``bent``, ``scratch``, ``rust``.

Defects are drawn to resemble their real counterparts and to stay within the intensity
range of normal texture (a misweave or a dent changes structure, not brightness; rust and
dye change hue at about the same luminance), so a per-pixel intensity threshold cannot
separate them (``experiments/baseline_intensity.py`` measures it). Masks are exact: the
pixels a defect changes (for soft-edged defects, those blended at 50 % or more; for a
misweave, the whole run of weave that is not interlaced).

Each image is a pure function of ``(seed, category, split, index)``, so the same seed
gives the same pixels whatever the dataset size. ``make_category`` returns an in-memory
:class:`~anomjax.data.dataset.Dataset`; ``write_mvtec`` writes the MVTec AD layout.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from anomjax.data.dataset import Dataset, array_split
from anomjax.data.layouts import GOOD, Sample

Rng = np.random.Generator


# --------------------------------------------------------------------------- helpers

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` ``[S, S]`` in pixels."""
    c = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(c, c, indexing="ij")


def _smooth_noise(rng: Rng, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` pixels, scaled to unit std."""
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return n / (n.std() + 1e-12)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _illumination(rng: Rng, size: int, strength: float) -> np.ndarray:
    """A smooth multiplicative lighting field ``[S, S, 1]`` around ``rng``'s global gain."""
    y, x = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((x * np.cos(a) + y * np.sin(a)) / size - 0.5) * 2
    field = rng.uniform(0.9, 1.1) * (1 + strength * ramp
                                     + 0.5 * strength * _smooth_noise(rng, size, size / 4))
    return field[:, :, None]


def _blob(rng: Rng, size: int, center: tuple[float, float], radius: float,
          roughness: float = 0.35) -> np.ndarray:
    """Soft irregular blob ``[S, S]`` in ``[0, 1]`` (1 inside, 1-pixel soft edge)."""
    y, x = _grid(size)
    dy, dx = y - center[0], x - center[1]
    theta = np.arctan2(dy, dx)
    r = np.hypot(dy, dx)
    edge = np.ones_like(theta)
    for k in range(2, 6):
        edge += roughness / k * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.clip(radius * edge - r + 0.5, 0.0, 1.0)


def _curve_distance(rng: Rng, size: int, start: np.ndarray, end: np.ndarray,
                    bend: float, jitter: float = 0.0) -> np.ndarray:
    """Distance ``[S, S]`` in pixels to a random quadratic curve from ``start`` to ``end``."""
    y, x = _grid(size)
    t = np.linspace(0, 1, 4 * int(np.linalg.norm(end - start) + 8))[:, None]
    normal = np.array([-(end - start)[1], (end - start)[0]])
    ctrl = (start + end) / 2 + bend * normal * rng.uniform(-1, 1)
    pts = (1 - t) ** 2 * start + 2 * t * (1 - t) * ctrl + t ** 2 * end
    if jitter:
        walk = np.cumsum(rng.standard_normal(len(pts))) * jitter / np.sqrt(len(pts))
        pts = pts + walk[:, None] * normal / (np.linalg.norm(normal) + 1e-9)
    d = np.full((size, size), np.inf)
    for py, px in pts:
        np.minimum(d, np.hypot(y - py, x - px), out=d)
    return d


def _random_point(rng: Rng, size: int, margin: float) -> np.ndarray:
    return rng.uniform(margin, size - margin, 2)


def _shift_hue(image: np.ndarray, tint: np.ndarray, amount: float) -> np.ndarray:
    """Move the colour of ``image`` towards ``tint`` keeping its luminance."""
    luma = _luma(image)[..., None]
    chroma = image - luma
    tint_chroma = tint - _luma(tint)
    return luma + (1 - amount) * chroma + amount * tint_chroma * (luma / (_luma(tint) + 1e-6))


def _blend(image: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return image * (1 - alpha[..., None]) + other * alpha[..., None]


# --------------------------------------------------------------------------- fabric

def _fabric_params(rng: Rng, size: int) -> dict:
    """Random draws of one piece of fabric (weave geometry, yarns, colour, lighting)."""
    scale = size / 128
    period = rng.uniform(6.5, 8.0) * scale
    return dict(
        period=period, angle=np.deg2rad(rng.uniform(-3, 3)),
        warp=0.15 * period * _smooth_noise(rng, size, 12 * scale),
        offset=rng.uniform(0, period, 2),
        yarn_u=1 + 0.12 * rng.standard_normal(512), yarn_v=1 + 0.12 * rng.standard_normal(512),
        base=np.array([0.62, 0.55, 0.42]) + rng.uniform(-0.04, 0.04, 3),
        fibre=0.04 * rng.standard_normal((size, size)),
        light=_illumination(rng, size, 0.08),
    )


def _fabric_image(p: dict, size: int, floats: np.ndarray | None = None) -> np.ndarray:
    """Render a plain weave; where ``floats`` ``[S, S]`` is true the warp floats over the weft."""
    y, x = _grid(size)
    period, a = p["period"], p["angle"]
    u = x * np.cos(a) + y * np.sin(a) + p["offset"][0] + p["warp"]
    v = -x * np.sin(a) + y * np.cos(a) + p["offset"][1]
    iu, iv = np.floor(u / period), np.floor(v / period)
    fu, fv = u / period - iu, v / period - iv
    warp_over = (iu + iv) % 2 == 0
    if floats is not None:
        warp_over = warp_over | floats
    across_warp = np.sin(np.pi * fu) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fv))
    across_weft = np.sin(np.pi * fv) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fu))
    pattern = np.where(warp_over, across_warp * p["yarn_u"][iu.astype(int) % 512],
                       across_weft * p["yarn_v"][iv.astype(int) % 512])
    return p["base"] * (0.45 + 0.55 * (pattern + p["fibre"]))[..., None] * p["light"]


def _fabric(rng: Rng, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    params = _fabric_params(rng, size)
    image = _fabric_image(params, size)
    scale = size / 128
    center = _random_point(rng, size, 20 * scale)
    if kind == GOOD:
        return image, np.zeros((size, size), bool)
    if kind == "misweave":  # a float: over a run of picks the warp is not interlaced
        y, x = _grid(size)
        length = rng.uniform(0.3, 0.6) * size
        band = ((np.abs(y - center[0]) < rng.uniform(1.0, 1.6) * params["period"])
                & (np.abs(x - center[1]) < length / 2))
        bad = _fabric_image(params, size, floats=band)
        changed = np.argwhere(np.abs(bad - image).max(axis=2) > 0.02)
        (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
        mask = band & (y > top) & (y < bottom + 1) & (x > left) & (x < right + 1)
        return np.where(mask[..., None], bad, image), mask  # the whole non-interlaced run
    if kind == "hole":  # torn threads over a backing that shows through
        alpha = _blob(rng, size, center, rng.uniform(5, 9) * scale, 0.5)
        frayed = _smooth_noise(rng, size, 1.0) > 0.6
        backing = np.array([0.45, 0.42, 0.38]) * rng.uniform(0.6, 1.4)
        grain = 0.03 * rng.standard_normal((size, size, 1))
        hole = np.where(frayed[..., None], image, backing + grain)
        return _blend(image, hole, alpha), alpha >= 0.5
    if kind == "stain":  # oil: slightly darker and browner, weave still visible
        alpha = ndimage.gaussian_filter(_blob(rng, size, center, rng.uniform(7, 13) * scale),
                                        1.5 * scale)
        stained = _shift_hue(image * (1 - rng.uniform(0.18, 0.3)), np.array([0.45, 0.35, 0.2]),
                             0.6)
        return _blend(image, stained, alpha), alpha >= 0.5
    if kind == "dye":  # foreign dye: another hue at the same luminance
        alpha = _blob(rng, size, center, rng.uniform(7, 12) * scale, 0.3)
        tints = np.array([[0.3, 0.45, 0.7], [0.7, 0.35, 0.35], [0.35, 0.6, 0.35]])
        return _blend(image, _shift_hue(image, tints[rng.integers(3)], 0.8), alpha), alpha >= 0.5
    raise ValueError(f"unknown fabric defect {kind!r}")


# --------------------------------------------------------------------------- metal

def _metal(rng: Rng, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 128
    y, x = _grid(size)
    streaks = _smooth_noise(rng, size, (0.6 * scale, 14 * scale))
    band = rng.uniform(0.2, 0.8) * size
    specular = 0.12 * np.exp(-0.5 * ((y - band) / (rng.uniform(0.15, 0.3) * size)) ** 2)
    grey = rng.uniform(0.5, 0.6) + 0.05 * streaks + specular
    grey = grey + 0.012 * rng.standard_normal((size, size))
    base = np.array([0.97, 1.0, 1.04])
    image = grey[..., None] * base * _illumination(rng, size, 0.06)
    center = _random_point(rng, size, 20 * scale)
    if kind == GOOD:
        return image, np.zeros((size, size), bool)
    if kind == "scratch":  # a fine groove across the brushing: bright lip, dark floor
        a = rng.uniform(np.pi / 6, 5 * np.pi / 6)
        half = rng.uniform(0.15, 0.35) * size * np.array([np.sin(a), np.cos(a)])
        d = _curve_distance(rng, size, center - half, center + half, 0.15, 1.5)
        width = rng.uniform(0.6, 1.1) * scale
        profile = np.where(d < width, -1.0, 0.0) + np.where((d >= width) & (d < 2 * width),
                                                             0.8, 0.0)
        image = image * (1 + rng.uniform(0.12, 0.2) * profile)[..., None]
        return image, d < 2 * width
    if kind == "dent":  # a shallow impact: lit on one side, shaded on the other
        radius = rng.uniform(6, 11) * scale
        r2 = ((y - center[0]) ** 2 + (x - center[1]) ** 2) / radius ** 2
        height = np.exp(-2.5 * r2)
        gy, gx = np.gradient(height)
        light = rng.uniform(0, 2 * np.pi)
        shade = (gy * np.sin(light) + gx * np.cos(light)) * radius
        image = image * (1 + rng.uniform(0.25, 0.4) * shade)[..., None]
        return image, r2 < 1.0
    if kind == "rust":  # oxidised patch: orange-brown at about the same brightness
        alpha = _blob(rng, size, center, rng.uniform(6, 11) * scale, 0.6)
        speckle = 0.6 + 0.4 * (_smooth_noise(rng, size, 1.0) > 0)
        alpha = alpha * speckle
        rust = _shift_hue(image, np.array([0.6, 0.35, 0.2]), 0.9)
        return _blend(image, rust, alpha), alpha >= 0.5
    if kind == "pits":  # a cluster of small corrosion pits
        mask = np.zeros((size, size), bool)
        image = image.copy()
        for _ in range(rng.integers(3, 7)):
            c = center + rng.normal(0, 5 * scale, 2)
            r = rng.uniform(0.8, 1.8) * scale
            pit = ((y - c[0]) ** 2 + (x - c[1]) ** 2) < r ** 2
            image[pit] *= rng.uniform(0.72, 0.85)
            mask |= pit
        return image, mask
    raise ValueError(f"unknown metal defect {kind!r}")


# --------------------------------------------------------------------------- wood

def _wood(rng: Rng, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 128
    y, x = _grid(size)
    a = rng.uniform(-0.2, 0.2)
    centre_dist = rng.uniform(3, 6) * size
    along = x * np.cos(a) + y * np.sin(a)
    across = -x * np.sin(a) + y * np.cos(a) + centre_dist
    r = np.hypot(across, 0.08 * (along - size / 2)) + 3 * scale * _smooth_noise(rng, size,
                                                                                 12 * scale)
    period = rng.uniform(9, 14) * scale
    t = (r / period) % 1.0
    latewood = 1 / (1 + np.exp(-(t - 0.78) * 30)) * (1 - 1 / (1 + np.exp(-(t - 0.97) * 40)))
    grain = _smooth_noise(rng, size, (0.5 * scale, 8 * scale))
    light_tone = np.array([0.78, 0.62, 0.43]) + rng.uniform(-0.04, 0.04, 3)
    dark_tone = light_tone * rng.uniform(0.62, 0.72)
    mix = np.clip(latewood + 0.12 * grain, 0, 1)
    image = _blend(np.broadcast_to(light_tone, (size, size, 3)), dark_tone * np.ones((size, size,
                                                                                       3)), mix)
    image = image * _illumination(rng, size, 0.06)
    center = _random_point(rng, size, 20 * scale)
    if kind == GOOD:
        return image, np.zeros((size, size), bool)
    if kind == "crack":  # a thin split running roughly along the grain
        half = rng.uniform(0.15, 0.3) * size * np.array([np.sin(a), np.cos(a)])
        d = _curve_distance(rng, size, center - half, center + half, 0.1, 3.0)
        width = rng.uniform(0.7, 1.3) * scale
        depth = np.clip(1.2 - d / width, 0, 1) * rng.uniform(0.3, 0.42)
        return image * (1 - depth)[..., None], depth > 0.5 * depth.max()
    if kind == "wormholes":  # a few small bored holes with dark interiors
        mask = np.zeros((size, size), bool)
        image = image.copy()
        for _ in range(rng.integers(2, 5)):
            c = center + rng.normal(0, 7 * scale, 2)
            ry, rx = rng.uniform(0.8, 2.0, 2) * scale
            hole = ((y - c[0]) / ry) ** 2 + ((x - c[1]) / rx) ** 2 < 1
            image[hole] = dark_tone * rng.uniform(0.75, 0.95)
            mask |= hole
        return image, mask
    if kind == "stain":  # a water mark: darker rim, faint interior
        alpha = _blob(rng, size, center, rng.uniform(8, 13) * scale, 0.4)
        rim = np.clip(alpha - ndimage.binary_erosion(alpha > 0.5, iterations=max(1, int(2 *
                                                                                     scale))),
                      0, 1)
        shade = 1 - 0.06 * alpha - 0.12 * rim
        return image * shade[..., None], alpha >= 0.5
    if kind == "bleach":  # a patch of faded, greyer wood
        alpha = _blob(rng, size, center, rng.uniform(7, 12) * scale, 0.5)
        faded = _shift_hue(image, np.array([0.6, 0.6, 0.6]), 0.6) * rng.uniform(1.0, 1.08)
        return _blend(image, faded, alpha), alpha >= 0.5
    raise ValueError(f"unknown wood defect {kind!r}")


# --------------------------------------------------------------------------- nut

def _hexagon(y: np.ndarray, x: np.ndarray, center: np.ndarray, radius: float, angle: float,
             vertex_push: np.ndarray) -> np.ndarray:
    """Inside-test ``[S, S]`` of a hexagon whose six vertices are scaled by ``vertex_push``."""
    angles = angle + np.arange(6) * np.pi / 3
    vy = center[0] + radius * vertex_push * np.sin(angles)
    vx = center[1] + radius * vertex_push * np.cos(angles)
    inside = np.ones_like(y, bool)
    for i in range(6):
        j = (i + 1) % 6
        cross = (vx[j] - vx[i]) * (y - vy[i]) - (vy[j] - vy[i]) * (x - vx[i])
        inside &= cross >= 0
    return inside


def _nut(rng: Rng, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 128
    y, x = _grid(size)
    belt = 0.47 + 0.04 * _smooth_noise(rng, size, 1.2 * scale) + 0.02 * np.sin(
        (x + y) / (3 * scale))
    background = belt[..., None] * np.array([0.95, 0.97, 1.0])
    center = size / 2 + rng.normal(0, 0.03 * size, 2)
    radius = rng.uniform(0.3, 0.33) * size
    angle = rng.uniform(0, np.pi / 3)
    push = np.ones(6)
    if kind == "bent":
        push[rng.integers(6)] = rng.choice([0.8, 1.18])
    body = _hexagon(y, x, center, radius, angle, push)
    normal_body = _hexagon(y, x, center, radius, angle, np.ones(6))
    dist = np.hypot(y - center[0], x - center[1])
    bore = dist < 0.45 * radius
    chamfer = np.clip((dist - 0.8 * radius) / (0.12 * radius), 0, 1)
    theta = np.arctan2(y - center[0], x - center[1])
    light = rng.uniform(0, 2 * np.pi)
    facet = 0.55 + 0.12 * np.cos(theta - light) * (dist / radius)
    metal = facet + 0.1 * chamfer * np.cos(theta - light + np.pi / 5)
    metal = metal + 0.015 * rng.standard_normal((size, size))
    thread = 0.75 + 0.12 * np.sin(dist / (1.1 * scale))
    nut_rgb = metal[..., None] * np.array([1.0, 0.98, 0.93])
    image = np.where((body & ~bore)[..., None], nut_rgb, background)
    inner_wall = bore & (dist > 0.33 * radius)
    image = np.where(inner_wall[..., None], background * thread[..., None] * 1.2, image)
    lighting = _illumination(rng, size, 0.05)
    image = image * lighting
    if kind == GOOD:
        return image, np.zeros((size, size), bool)
    if kind == "bent":
        return image, body ^ normal_body
    face = body & ~bore
    if kind == "missing":  # a chip broken off one corner
        corner = angle + rng.integers(6) * np.pi / 3
        c = center + radius * np.array([np.sin(corner), np.cos(corner)])
        chip = _blob(rng, size, c, rng.uniform(0.35, 0.5) * radius, 0.3) > 0.5
        mask = chip & face
        return np.where(mask[..., None], background * lighting, image), mask
    face_pts = np.argwhere(face & (dist > 0.55 * radius) & (dist < 0.8 * radius))
    spot = face_pts[rng.integers(len(face_pts))].astype(float) + 0.5
    if kind == "scratch":
        a = rng.uniform(0, np.pi)
        half = rng.uniform(0.15, 0.25) * size * np.array([np.sin(a), np.cos(a)])
        d = _curve_distance(rng, size, spot - half, spot + half, 0.2)
        mask = (d < rng.uniform(0.6, 1.1) * scale) & face
        return np.where(mask[..., None], image * rng.uniform(1.15, 1.3), image), mask
    if kind == "rust":
        alpha = _blob(rng, size, spot, rng.uniform(0.15, 0.25) * radius, 0.6) * face
        return _blend(image, _shift_hue(image, np.array([0.62, 0.36, 0.2]), 0.9), alpha), \
            alpha >= 0.5
    raise ValueError(f"unknown nut defect {kind!r}")


# --------------------------------------------------------------------------- categories

Generator = Callable[[Rng, int, str], tuple[np.ndarray, np.ndarray]]

#: ``category -> (generator, defect types)``.
_CATEGORIES: dict[str, tuple[Generator, tuple[str, ...]]] = {
    "fabric": (_fabric, ("hole", "stain", "misweave", "dye")),
    "metal": (_metal, ("scratch", "dent", "rust", "pits")),
    "wood": (_wood, ("crack", "wormholes", "stain", "bleach")),
    "nut": (_nut, ("missing", "bent", "scratch", "rust")),
}
CATEGORIES: tuple[str, ...] = tuple(_CATEGORIES)
TEXTURES: tuple[str, ...] = ("fabric", "metal", "wood")
OBJECTS: tuple[str, ...] = ("nut",)


def defect_types(category: str) -> tuple[str, ...]:
    """The defect types of ``category``."""
    return _category(category)[1]


def _category(name: str) -> tuple[Generator, tuple[str, ...]]:
    if name not in _CATEGORIES:
        raise ValueError(f"unknown synthetic category {name!r}; known: {', '.join(CATEGORIES)}")
    return _CATEGORIES[name]


def generate_image(category: str, kind: str, index: int, *, image_size: int = 128,
                   seed: int = 0, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """One image ``[S, S, 3]`` ``float32`` in ``[0, 1]`` and its mask ``[S, S]`` ``uint8``.

    ``kind`` is ``"good"`` or one of the category's defect types; the pixels depend only on
    ``(seed, category, split, kind, index, image_size)``.
    """
    generator, kinds = _category(category)
    if kind != GOOD and kind not in kinds:
        raise ValueError(f"{category} has no defect {kind!r}; known: {', '.join(kinds)}")
    if image_size < 32:
        raise ValueError(f"synthetic images need image_size >= 32, got {image_size}")
    words = [zlib.crc32(w.encode()) for w in (category, split, kind)]
    rng = np.random.default_rng([seed, *words, index])
    image, mask = generator(rng, image_size, kind)
    return np.clip(image, 0, 1).astype(np.float32), mask.astype(np.uint8)


def _test_kinds(category: str, n_test_good: int, n_test_defect: int) -> list[tuple[str, int]]:
    """``(kind, index within kind)`` of the test images: goods, then defects in turn."""
    kinds = defect_types(category)
    out = [(GOOD, i) for i in range(n_test_good)]
    counts = dict.fromkeys(kinds, 0)
    for i in range(n_test_defect):
        kind = kinds[i % len(kinds)]
        out.append((kind, counts[kind]))
        counts[kind] += 1
    return out


def make_category(name: str, *, n_train: int = 40, n_test_good: int = 8,
                  n_test_defect: int = 16, image_size: int = 128, seed: int = 0) -> Dataset:
    """An in-memory dataset of one synthetic category (same split API as files on disk).

    Test images are ``n_test_good`` normal ones followed by ``n_test_defect`` defective
    ones cycling through the category's defect types. Paths are the relative paths
    :func:`write_mvtec` would write.
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    train_pairs = [generate_image(name, GOOD, i, image_size=image_size, seed=seed,
                                  split="train") for i in range(n_train)]
    test_plan = _test_kinds(name, n_test_good, n_test_defect)
    test_pairs = [generate_image(name, kind, i, image_size=image_size, seed=seed)
                  for kind, i in test_plan]
    train_samples = [Sample(f"{name}/train/good/{i:03d}.png", 0, None, GOOD)
                     for i in range(n_train)]
    test_samples = [Sample(f"{name}/test/{kind}/{i:03d}.png", int(kind != GOOD), None, kind)
                    for kind, i in test_plan]

    def split(samples: list[Sample], pairs: list[tuple[np.ndarray, np.ndarray]]):
        shape = (0, image_size, image_size)
        images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((*shape, 3), np.float32)
        masks = np.stack([p[1] for p in pairs]) if pairs else np.zeros(shape, np.uint8)
        return array_split(samples, images, masks)

    return Dataset(name, "synthetic", split(train_samples, train_pairs),
                   split(test_samples, test_pairs))


def write_mvtec(root: str | os.PathLike, categories: Sequence[str] = CATEGORIES, *,
                n_train: int = 40, n_test_good: int = 8, n_test_defect: int = 16,
                image_size: int = 128, seed: int = 0, disable: bool = False) -> list[Path]:
    """Write categories to ``root/<category>/`` in the MVTec AD layout; returns their folders.

    Images are 8-bit RGB PNGs, masks ``ground_truth/<defect>/<stem>_mask.png`` with 0/255.
    ``disable`` turns the progress bar off.
    """
    root = Path(root)
    folders = []
    for name in tqdm(categories, desc="writing synthetic categories", unit="category",
                     disable=disable):
        ds = make_category(name, n_train=n_train, n_test_good=n_test_good,
                           n_test_defect=n_test_defect, image_size=image_size, seed=seed)
        base = root / name
        for split in (ds.train, ds.test):
            if not len(split):
                continue
            batch = split.load_all(num_workers=0)
            for image, mask, path, kind in zip(batch.images, batch.masks, batch.paths,
                                               batch.defect_types, strict=True):
                rel = Path(path).relative_to(name)
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(image * 255).astype(np.uint8)).save(base / rel)
                if kind != GOOD:
                    mask_path = base / "ground_truth" / kind / f"{rel.stem}_mask.png"
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask * np.uint8(255)).save(mask_path)
        folders.append(base)
    return folders
