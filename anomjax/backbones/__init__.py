"""Pretrained CNN backbones in Flax (EfficientNet-Lite, ResNet, Wide ResNet) and feature taps.

    backbone, variables = load_backbone("efficientnet_lite0")
    feats = backbone.features(variables, images, taps=("stage2", "stage3"))
    backbone.taps["stage2"]  # TapInfo(stride=4, channels=24)
"""

from anomjax.backbones.registry import (
    DEFAULT_BACKBONE,
    Backbone,
    TapInfo,
    WeightsNotFoundError,
    backbone_names,
    find_weights,
    get_backbone,
    load_backbone,
    torch_state_dict_shapes,
    variables_from_state_dict,
    weights_available,
)
from anomjax.backbones.state_dict import read_state_dict
from anomjax.backbones.torch_pickle import TorchFileError, UnsafePickleError

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "TapInfo",
    "TorchFileError",
    "UnsafePickleError",
    "WeightsNotFoundError",
    "backbone_names",
    "find_weights",
    "get_backbone",
    "load_backbone",
    "read_state_dict",
    "torch_state_dict_shapes",
    "variables_from_state_dict",
    "weights_available",
]
