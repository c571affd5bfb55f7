"""Per-pixel intensity-threshold baseline on the synthetic dataset or on real folders.

Scores every test pixel by its intensity (luma) alone, in four ways, and reports the pixel
AUROC of each (both directions for raw intensity): raw intensity, |intensity - per-pixel
mean of the training images|, and the same divided by the per-pixel training std. The
synthetic data is meant to defeat all of them (pixel AUROC < 0.8). On a real folder
(``--data``) they are the floor a learned method's pixel AUROC should clear: a method whose
map ranks pixels by darkness (for example a reconstruction still brighter than every image)
lands near ``1 - raw_bright``.

    python experiments/baseline_intensity.py [--image-size 128] [--seed 0]
        [--data ../shared/data/mvtec3d_tire ../shared/data/magnetic_tile]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from anomjax.data import synthetic


def pixel_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    scores, labels = scores.ravel(), labels.ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def intensity_baselines(category: str, image_size: int = 128, seed: int = 0,
                        **sizes: int) -> dict[str, float]:
    """Pixel AUROC of each intensity score on one synthetic category."""
    return split_baselines(synthetic.make_category(category, image_size=image_size,
                                                   seed=seed, **sizes))


def split_baselines(ds: Any) -> dict[str, float]:
    """Pixel AUROC of each intensity score on a dataset's test split (``ds.train``,
    ``ds.test`` as :func:`anomjax.data.open_dataset` gives them)."""
    train, test = ds.train.load_all(num_workers=0), ds.test.load_all(num_workers=0)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    train_i, test_i = train.images @ luma, test.images @ luma
    mean, std = train_i.mean(axis=0), train_i.std(axis=0) + 1e-6
    masks = test.masks
    return {
        "raw_bright": pixel_auroc(test_i, masks),
        "raw_dark": pixel_auroc(-test_i, masks),
        "abs_dev_mean": pixel_auroc(np.abs(test_i - mean), masks),
        "abs_zscore": pixel_auroc(np.abs(test_i - mean) / std, masks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, nargs="+", default=[],
                        help="MVTec-layout folders to score instead of the synthetic ones")
    args = parser.parse_args()
    if args.data:
        from anomjax.data import open_dataset

        for folder in args.data:
            result = split_baselines(open_dataset(folder, image_size=args.image_size))
            cells = "  ".join(f"{k} {v:.3f}" for k, v in result.items())
            print(f"{folder.name}  {cells}")
        return
    worst = 0.0
    for category in synthetic.CATEGORIES:
        result = intensity_baselines(category, args.image_size, args.seed)
        best = max(result.values())
        worst = max(worst, best)
        cells = "  ".join(f"{k} {v:.3f}" for k, v in result.items())
        print(f"{category:8s} {cells}  best {best:.3f}")
    print(f"highest pixel AUROC of any intensity threshold: {worst:.3f}")


if __name__ == "__main__":
    main()
