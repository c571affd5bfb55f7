"""The command line's persistent compilation cache: on by default in $ANOMJAX_CACHE/xla, off
with ANOMJAX_COMPILE_CACHE=0, and a cache folder the user chose is kept."""

import os
import subprocess
import sys

CODE = """
import jax, jax.numpy as jnp
from anomjax.compile_cache import enable_compile_cache
print(enable_compile_cache())
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
"""


def _run(env_extra: dict, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                     "ANOMJAX_COMPILE"))}
    env.update({"ANOMJAX_CACHE": str(tmp_path / "cache"),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env_extra})
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_on_by_default_in_the_anomjax_cache_folder(tmp_path):
    folder = tmp_path / "cache" / "xla"
    assert _run({}, tmp_path) == str(folder)
    assert any(folder.iterdir())  # the jitted program was stored


def test_off_on_request_and_the_users_folder_is_kept(tmp_path):
    assert _run({"ANOMJAX_COMPILE_CACHE": "0"}, tmp_path) == "None"
    mine = tmp_path / "mine"
    assert _run({"JAX_COMPILATION_CACHE_DIR": str(mine)}, tmp_path) == "None"
    assert not (tmp_path / "cache" / "xla").exists()
    assert any(mine.iterdir())
