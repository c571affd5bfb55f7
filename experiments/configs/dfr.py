"""DFR (Shi et al., 2021) on one category: 256 px, batch 4 as the authors' code, 150 epochs."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("dfr", arg, image_size=256, epochs=150, batch_size=4)
