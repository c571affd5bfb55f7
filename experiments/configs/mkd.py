"""MKD (Salehi et al., CVPR 2021) on one category: 128 px as the authors' MVTec config,
601 epochs (Adam 1e-3)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("mkd", arg, image_size=128, epochs=601)
