"""CS-Flow (Rudolph et al., WACV 2022) on one category: the authors' 768 px and 240 epochs
(4 meta-epochs of 60)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("csflow", arg, image_size=768)
