"""DifferNet (Rudolph et al., WACV 2021) on one category: the authors' 448 px and
192 epochs (24 meta-epochs of 8)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("differnet", arg, image_size=448)
