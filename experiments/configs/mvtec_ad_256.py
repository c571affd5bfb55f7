"""Benchmark protocol: MVTec AD's 15 categories at 256 px (no crop), for
``anomjax benchmark --protocol experiments/configs/mvtec_ad_256.py``."""

import ml_collections

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
              "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
              "zipper")


def get_config(arg=None):
    del arg
    return ml_collections.ConfigDict({"image_size": 256, "crop": None,
                                      "categories": CATEGORIES})
