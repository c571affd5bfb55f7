"""Semi-orthogonal PaDiM against Pangoraw/SemiOrthogonal (an unofficial re-implementation; the
authors published no code) on a seeded random ResNet-18 (fixture:
``experiments/parity/so_padim.py``): embedding, fitted Gaussians and Mahalanobis maps.

Our real ``fit`` runs with the weights read from a file and the reference's ``W`` fed in (a
subclass overrides only ``draw_projection``). The reference stops at the Mahalanobis map; the
upsampling, smoothing and image score are PaDiM's (compared with anomalib in
``test_parity_padim.py``). Our own ``W`` is checked here for what the reference's is: a
QR factor with the column signs fixed (Haar-distributed), as the reference's.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from feature_modeling_parity import batch_of, seeded_weights_file
from parity_harness import Fixture

from anomjax.methods.feature_modeling.padim import SemiOrthogonalPaDiM, semi_orthogonal_matrix
from anomjax.nn import gaussian


@dataclasses.dataclass(frozen=True)
class FedSemiOrthogonalPaDiM(SemiOrthogonalPaDiM):
    """Semi-orthogonal PaDiM whose random embedding is the reference's."""

    fed: tuple[tuple[float, ...], ...] = ()

    def draw_projection(self, key: jax.Array, total: int) -> jax.Array:
        return jax.numpy.asarray(self.fed, jax.numpy.float32)


def test_so_padim_matches_semi_orthogonal_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMJAX_CACHE", str(tmp_path / "cache"))
    ref = Fixture("so_padim")
    w = ref.input("W")
    method = FedSemiOrthogonalPaDiM(
        backbone="resnet18", backbone_weights=seeded_weights_file(tmp_path, ref.input(
            "weight_seed")), k=w.shape[1], fed=tuple(map(tuple, w.tolist())))
    train, test = ref.input("train"), ref.input("test")
    state = method.fit(jax.random.key(0), [batch_of(train[:5]), batch_of(train[5:])])

    embedding = method.embed(state["backbone"], state["embedding"], test)
    ref.close("embedding W^T x", embedding, ref.output("embedding"))
    ref.close("fitted mean", state["mean"], ref.output("mean"))
    rows, cols = ref.input("positions").T
    inv_chol = np.asarray(state["inv_chol"], np.float64)[rows, cols]
    ref.close("fitted inverse covariance", np.swapaxes(inv_chol, -1, -2) @ inv_chol,
              ref.output("inv_covariance"))
    distance = gaussian.mahalanobis({k: state[k] for k in ("mean", "inv_chol")}, embedding)
    ref.close("Mahalanobis map", distance, ref.output("distance"))



def test_semi_orthogonal_matrix_is_the_sign_fixed_q_factor():
    """As the reference's ``_generate_W``: ``W^T W = I`` and ``G = W R`` with ``R`` upper
    triangular with a positive diagonal (the QR sign fix), ``G`` the standard-normal draw."""
    key, rows, cols = jax.random.key(1), 448, 100
    w = np.asarray(semi_orthogonal_matrix(key, rows, cols), np.float64)
    g = np.asarray(jax.random.normal(key, (rows, cols), jax.numpy.float32), np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(cols), atol=1e-5)
    r = w.T @ g
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-4)
    assert np.all(np.diag(r) > 0)
