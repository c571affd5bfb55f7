"""PatchCore against the authors' code (amazon-science/patchcore-inspection) on a seeded
random ResNet-18 (fixture: ``experiments/parity/patchcore.py``): patch features, coreset
selection and bank, patch scores, maps before and after smoothing, image scores.

Our real ``fit`` and ``score`` run with the weights read from a file, the reference's
defaults where they are ours (``aggregation="patch"``, D1024-1024, patch size 3, 10 %), and
the authors' behaviour selected where ours follows the paper or anomalib:
``coreset_start="authors"`` (their approximate sampler's anchor bound),
``scoring="authors"`` with ``num_neighbours=1`` (squared L2 patch scores, max image score).
Their two random draws are fed in by a subclass that overrides only ``draw_projection`` and
``draw_anchors``. Our bank lives in compact coordinates ``z = u B``; the authors' 1024-d
feature is ``f = u W`` (``W`` the pooling map), and ``B = W V`` with orthonormal ``V``, so
``f = z V^T``: the features and bank are compared as ``z V^T``, and their projection ``M``
``[128, 1024]`` of ``f`` is ours ``V^T M^T`` of ``z``. Our default image score, the paper's
Eq. 7, which the authors' code lacks, is compared with anomalib 2.7's on the same bank.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_modeling_parity import batch_of, seeded_weights_file
from parity_harness import Fixture

from anomjax.backbones import get_backbone
from anomjax.methods.feature_modeling.patchcore import PatchCore, reweighted_image_score
from anomjax.nn.knn import nearest_neighbours
from anomjax.nn.patch_features import patch_pooling_matrix
from anomjax.scoring import upsample


@dataclasses.dataclass(frozen=True)
class FedPatchCore(PatchCore):
    """PatchCore whose coreset projection and anchors are the reference's."""

    fed_projection: tuple[tuple[float, ...], ...] = ()
    fed_anchors: tuple[int, ...] = ()

    def draw_projection(self, key: jax.Array, dim: int) -> jax.Array:
        return jnp.asarray(self.fed_projection, jnp.float32)

    def draw_anchors(self, key: jax.Array, n: int) -> jax.Array:
        return jnp.asarray(self.fed_anchors, jnp.int32)


def feature_rotation(method: PatchCore) -> np.ndarray:
    """``V`` ``[1024, K]`` with ``B = W V`` (``f = z V^T``)."""
    taps = get_backbone(method.backbone).taps
    pool = patch_pooling_matrix([taps[t].channels for t in method.feature_layers],
                                method.layer_dim, method.target_dim, method.patch_size,
                                method.aggregation)
    return np.linalg.pinv(pool) @ method.basis().astype(np.float64)


@pytest.fixture(scope="module")
def ref() -> Fixture:
    return Fixture("patchcore")


def test_patchcore_matches_authors_code(ref, tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMJAX_CACHE", str(tmp_path / "cache"))
    plain = PatchCore(sigma_side=0, backbone="resnet18", backbone_weights=seeded_weights_file(
        tmp_path, ref.input("weight_seed")), coreset_ratio=0.1, coreset_start="authors",
        scoring="authors", num_neighbours=1, progress=False)
    rotation = feature_rotation(plain)
    projection = rotation.T @ ref.input("projection").T.astype(np.float64)  # [K, 128]
    method = FedPatchCore(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)},
                          fed_projection=tuple(map(tuple, projection.tolist())),
                          fed_anchors=tuple(int(i) for i in ref.input("anchors")))
    train, test = ref.input("train"), ref.input("test")
    state = method.fit(jax.random.key(0), [batch_of(train[:5]), batch_of(train[5:])])

    z = method.embed(state["backbone"], state["basis"], test)
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    ref.close("patch features (1024-d)", flat @ rotation.T, ref.output("features"))

    bank = np.asarray(state["bank"], np.float64)  # in selection order, as the reference's
    ref.close("coreset bank (1024-d)", bank @ rotation.T, ref.output("bank"))

    dist, index = nearest_neighbours(jnp.asarray(flat, jnp.float32), state["bank"], 1,
                                     max_block_bytes=2**26)
    patch_scores = np.square(dist).reshape(ref.output("patch_scores").shape)
    ref.close("patch scores (squared L2)", patch_scores, ref.output("patch_scores"))
    ref.close("upsampled map", upsample(patch_scores, test.shape[1:3]),
              ref.output("upsampled"))
    scores = method.score(state, test)
    ref.close("smoothed map", scores.maps, ref.output("map"))
    ref.close("image score", scores.image, ref.output("image_score"))

    # Our default image score, the paper's Eq. 7 (b = 9), against anomalib's on the same bank.
    b = len(test)
    eq7 = reweighted_image_score(dist.reshape(b, -1), index.reshape(b, -1),
                                 z.reshape(b, -1, z.shape[-1]), state["bank"],
                                 PatchCore().num_neighbours, max_block_bytes=2**26)
    ref.close("image score, Eq. 7 (anomalib)", eq7, ref.output("image_score_eq7"))
