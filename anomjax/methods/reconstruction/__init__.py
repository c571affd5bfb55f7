"""Reconstruction-based methods: a model learns to reconstruct normal data (images or deep
features); the reconstruction error localises anomalies."""

from anomjax.methods.reconstruction.autoencoder import AE
from anomjax.methods.reconstruction.dfr import DFR
from anomjax.methods.reconstruction.favae import FAVAE
from anomjax.methods.reconstruction.memae import MemAE
from anomjax.methods.reconstruction.vae import VAE

__all__ = ["AE", "DFR", "FAVAE", "MemAE", "VAE"]
