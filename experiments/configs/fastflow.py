"""FastFlow (Yu et al., 2021) on one category: 256 px, 500 epochs (the paper's)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("fastflow", arg, image_size=256)
