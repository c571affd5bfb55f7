"""PaDiM against anomalib 2.7's ``PadimModel`` on a seeded random ResNet-18 (fixture:
``experiments/parity/padim.py``): backbone taps, embedding, fitted Gaussians, maps and score.

Our real ``fit`` and ``score`` run, with the weights read from a file and anomalib's random
channel draw fed in (a subclass overrides only ``draw_projection``). Two settings follow
anomalib: the ridge is its ``0.01 + 1e-5`` (a second stabiliser it adds before inverting),
and its blur pads with torch's "reflect" (scipy's "mirror"), while ours pads like
``scipy.ndimage.gaussian_filter`` (the unofficial PaDiM and SPADE code): the smoothed map is
compared away from the border (the kernel radius, 16 px), the border deviation recorded.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from feature_modeling_parity import batch_of, seeded_weights_file
from parity_harness import Fixture

from anomjax.backbones import get_backbone
from anomjax.methods.feature_modeling.padim import PaDiM
from anomjax.nn import gaussian
from anomjax.scoring import upsample

RADIUS = 16  # int(4 * sigma + 0.5) at sigma 4: pixels the blur's padding mode reaches


@dataclasses.dataclass(frozen=True)
class FedPaDiM(PaDiM):
    """PaDiM whose random channel choice is the reference's."""

    channel_index: tuple[int, ...] = ()

    def draw_projection(self, key: jax.Array, total: int) -> jax.Array:
        return jax.numpy.asarray(self.channel_index, jax.numpy.int32)


@pytest.fixture(scope="module")
def ref() -> Fixture:
    return Fixture("padim")


def test_padim_matches_anomalib(ref, tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMJAX_CACHE", str(tmp_path / "cache"))
    index = ref.input("channel_index")
    method = FedPaDiM(sigma_side=0, backbone="resnet18", backbone_weights=seeded_weights_file(
        tmp_path, ref.input("weight_seed")), n_features=len(index), epsilon=0.01 + 1e-5,
        channel_index=tuple(int(i) for i in index))
    train, test = ref.input("train"), ref.input("test")
    state = method.fit(jax.random.key(0), [batch_of(train[:5]), batch_of(train[5:])])

    taps = get_backbone("resnet18").features(state["backbone"], test, method.feature_taps)
    for tap, value in taps.items():
        ref.close(f"backbone {tap}", np.asarray(value)[..., :8], ref.output(f"tap_{tap}"))
    embedding = method.embed(state["backbone"], state["channel_index"], test)
    ref.close("embedding", embedding, ref.output("embedding"))

    ref.close("fitted mean", state["mean"], ref.output("mean"))
    rows, cols = ref.input("positions").T
    inv_chol = np.asarray(state["inv_chol"], np.float64)[rows, cols]
    ref.close("fitted inverse covariance", np.swapaxes(inv_chol, -1, -2) @ inv_chol,
              ref.output("inv_covariance"))

    fitted = {k: state[k] for k in ("mean", "inv_chol")}
    distance = gaussian.mahalanobis(fitted, embedding)
    ref.close("Mahalanobis map", distance, ref.output("distance"))
    ref.close("upsampled map", upsample(distance, test.shape[1:3]), ref.output("upsampled"))
    scores = method.score(state, test)
    inner = (slice(None), slice(RADIUS, -RADIUS), slice(RADIUS, -RADIUS))
    ref.close("smoothed map (interior)", np.asarray(scores.maps)[inner],
              ref.output("map")[inner])
    ref.close("image score", scores.image, ref.output("image_score"))
