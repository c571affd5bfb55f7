"""SPADE (Cohen & Hoshen, 2020) on one category: resize 256, centre crop 224, K = 50."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("spade", arg, image_size=256, crop=224, batch_size=32)
