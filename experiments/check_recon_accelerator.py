"""Accelerator check of the scores of the reconstruction/generative family (run on a GPU/TPU).

The SSIM and MSGMS maps (``anomjax.nn.losses``, convolutions at HIGHEST precision) on the
default device against scikit-image / the same function on the CPU, and one score of each
method (random initialisation) on the default device against the CPU::

    python experiments/check_recon_accelerator.py

Prints the largest absolute differences and exits non-zero when one exceeds its tolerance.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from skimage.metrics import structural_similarity

from anomjax.methods import make_method
from anomjax.nn.losses import msgms_map, ssim_map

TINY = {"ae": {"width": "8"}, "memae": {"width": "8"}, "vae": {"width": "8"},
        "ganomaly": {"width": "8"}, "anogan": {"width": "8", "search_steps": "20"},
        "f_anogan": {"width": "8"}}


def main() -> int:
    cpu = jax.devices("cpu")[0]
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    failures = []
    ssim = np.asarray(jax.jit(ssim_map)(jax.device_put(x, device), jax.device_put(y, device)))
    want = np.stack([structural_similarity(a, b, channel_axis=-1, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, full=True)[1].mean(-1)
                     for a, b in zip(x.astype(np.float64), y.astype(np.float64), strict=True)])
    checks = [("ssim_map vs scikit-image", np.abs(ssim - want).max(), 1e-4)]
    on = np.asarray(jax.jit(msgms_map)(jax.device_put(x, device), jax.device_put(y, device)))
    off = np.asarray(jax.jit(msgms_map)(jax.device_put(x, cpu), jax.device_put(y, cpu)))
    checks.append(("msgms_map device vs cpu", np.abs(on - off).max(), 1e-5))
    for name, settings in TINY.items():
        method = make_method(name, settings)
        state = method.init(jax.random.key(0), jnp.asarray(x))
        on = jax.jit(method.score)(jax.device_put(state, device), jax.device_put(x, device))
        off = jax.jit(method.score)(jax.device_put(state, cpu), jax.device_put(x, cpu))
        scale = float(np.abs(np.asarray(off.maps)).max()) or 1.0
        checks.append((f"{name} map device vs cpu (relative)",
                       np.abs(np.asarray(on.maps) - np.asarray(off.maps)).max() / scale, 1e-3))
    for label, value, tol in checks:
        status = "ok" if value <= tol else "FAIL"
        print(f"{status:4} {label}: {value:.3g} (tolerance {tol:g}) on {device.platform}")
        if value > tol:
            failures.append(label)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
