"""anomjax: unsupervised anomaly localization for industrial images, in JAX."""

from anomjax.types import Batch, Scores

__version__ = "0.1.0"

__all__ = ["Batch", "Scores", "__version__"]
