"""Importing the library (every method, the engine, the CLI) does not import TensorFlow:
TFP's JAX substrate under distrax would, costing ~0.8 GB of memory in every process."""

import subprocess
import sys

CODE = """
import sys
import anomjax.cli, anomjax.evaluate, anomjax.methods, anomjax.train
assert "distrax" in sys.modules
print("tensorflow" in sys.modules)
import tensorflow
print(hasattr(tensorflow, "constant"))
"""


def test_library_imports_without_tensorflow_and_tensorflow_still_imports_after():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "True"], proc.stdout


def test_importing_the_library_starts_no_backend():
    """``jax.distributed.initialize`` must run before any JAX computation: importing anomjax
    (``anomjax fit --distributed`` imports it first) may not compute anything, e.g. a
    module-level ``jnp`` constant."""
    code = ("import anomjax.cli, anomjax.runs, anomjax.experiment, anomjax.methods\n"
            "from jax._src import xla_bridge\n"
            "print(sorted(xla_bridge._backends))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
