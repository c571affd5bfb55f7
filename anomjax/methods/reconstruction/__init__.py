"""Reconstruction-based methods: a model learns to reconstruct normal data (images or deep
features); the reconstruction error localises anomalies."""

from anomjax.methods.reconstruction.dfr import DFR

__all__ = ["DFR"]
