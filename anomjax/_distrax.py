"""distrax, imported without TensorFlow.

TensorFlow Probability's JAX substrate, which distrax builds on, imports TensorFlow whenever it
is installed, only to copy docstrings; the ``tfds`` extra installs it, and that import costs
much resident memory and start-up time in every process that uses a flow or the VAE (measured:
``experiments/method_notes.md#nn``). Importing distrax through this module hides TensorFlow for
that one import (TFP then takes its TensorFlow-free path); TensorFlow stays importable
afterwards (the TFDS reader imports it when it is used).
"""

from __future__ import annotations

import sys

_hidden = "tensorflow" not in sys.modules
if _hidden:
    sys.modules["tensorflow"] = None  # makes "import tensorflow" raise ImportError
try:
    import distrax
finally:
    if _hidden and sys.modules.get("tensorflow", False) is None:
        del sys.modules["tensorflow"]

__all__ = ["distrax"]
