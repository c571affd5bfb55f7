"""Generative (GAN) methods: a generator learns the distribution of normal images; an image
is anomalous when the generator cannot produce it (AnoGAN, f-AnoGAN, GANomaly)."""

from anomjax.methods.generative.anogan import AnoGAN
from anomjax.methods.generative.f_anogan import FAnoGAN
from anomjax.methods.generative.ganomaly import GANomaly

__all__ = ["AnoGAN", "FAnoGAN", "GANomaly"]
