"""Benchmark protocol: VisA's 12 categories at 256 px (no crop)."""

import ml_collections

CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
              "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")


def get_config(arg=None):
    del arg
    return ml_collections.ConfigDict({"image_size": 256, "crop": None,
                                      "categories": CATEGORIES})
