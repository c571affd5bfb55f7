"""SPADE against byungjae89/SPADE-pytorch (the reference code; the authors published none) on
a seeded random ResNet-18 (fixture: ``experiments/parity/spade.py``): image scores, the
per-layer nearest-neighbour maps, their upsampled mean and the smoothed map.

Our real ``fit`` and ``score`` run with the weights read from a file, ``pyramid="per_layer"``
(our default, the reference's reading), ``K`` = the reference run's ``top_k`` and the training
pyramid stored in float32; the default float16 storage is measured against the same
reference at a looser bound.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from feature_modeling_parity import batch_of, seeded_weights_file
from parity_harness import Fixture

from anomjax.methods.feature_modeling.spade import SPADE, gallery_distances
from anomjax.nn.knn import nearest_neighbours

FLOAT16_TOL = 1e-3


@pytest.fixture(scope="module")
def ref() -> Fixture:
    return Fixture("spade")


def test_spade_matches_reference_code(ref, tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMJAX_CACHE", str(tmp_path / "cache"))
    method = SPADE(sigma_side=0, backbone="resnet18", backbone_weights=seeded_weights_file(
        tmp_path, ref.input("weight_seed")), image_neighbours=int(ref.input("top_k")),
        pyramid="per_layer", storage_dtype="float32")
    train = ref.input("train_u8").astype(np.float32) / np.float32(255)
    test = ref.input("test_u8").astype(np.float32) / np.float32(255)
    state = method.fit(jax.random.key(0), [batch_of(train[:4]), batch_of(train[4:])])

    scores = method.score(state, test)
    ref.close("image score (mean distance to K images)", scores.image,
              ref.output("image_score"))
    descriptor, pyramid = method.describe(state["backbone"], test)
    _, neighbours = nearest_neighbours(descriptor, state["image_features"],
                                       method.image_neighbours)
    for tap in method.pyramid_taps:
        layer = gallery_distances(pyramid[tap], state["pyramid"][tap], neighbours, 1, 2**26)
        ref.close(f"{tap} nearest-neighbour map", layer, ref.output(f"{tap}_distance"))
    averaged = dataclasses.replace(method, sigma=0.0).score(state, test).maps
    ref.close("upsampled mean map", averaged, ref.output("averaged"))
    ref.close("smoothed map", scores.maps, ref.output("map"))

    half = dataclasses.replace(method, storage_dtype="float16")
    half_scores = half.score(half.fit(jax.random.key(0), [batch_of(train)]), test)
    ref.close("smoothed map, default float16 storage", half_scores.maps, ref.output("map"),
              tol=FLOAT16_TOL)
