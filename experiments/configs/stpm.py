"""STPM (Wang et al., BMVC 2021) on one category: 256 px, batch 32, 100 epochs (SGD 0.4)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("stpm", arg, image_size=256, epochs=100, batch_size=32)
