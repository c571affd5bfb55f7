"""CFLOW-AD (Gudovskiy et al., WACV 2022) on one category: 256 px, the authors' 200 epochs
(25 meta-epochs of 8)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("cflow", arg, image_size=256)
