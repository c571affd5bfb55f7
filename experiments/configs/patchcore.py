"""PatchCore (Roth et al., CVPR 2022) on one category, the paper's protocol: resize 256,
centre crop 224; coreset 10 %, b = 9 (the method's defaults)."""

from anomjax.experiment import base_config


def get_config(arg=None):
    return base_config("patchcore", arg, image_size=256, crop=224, batch_size=16)
