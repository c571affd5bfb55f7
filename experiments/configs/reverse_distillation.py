"""Reverse distillation (Deng & Li, CVPR 2022) on one category: 256 px, batch 16,
200 epochs (Adam 0.005)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("reverse_distillation", arg, image_size=256, epochs=200, batch_size=16)
