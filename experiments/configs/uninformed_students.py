"""Uninformed Students (Bergmann et al., CVPR 2020) on one category: 256 px, 100 epochs."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("uninformed_students", arg, image_size=256, epochs=100)
