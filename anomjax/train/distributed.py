"""Multi-host start-up: ``jax.distributed.initialize`` from the usual environment variables."""

from __future__ import annotations

import os

import jax

#: The environment variables read by :func:`initialize_from_env` (all three, or none).
ENV_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_from_env() -> None:
    """Join a multi-process JAX job; call it before any other JAX work.

    With ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` set, those are used; with none of them, JAX detects the cluster itself
    (Cloud TPU pods, SLURM, Open MPI, ...). CPU processes talk through gloo collectives.
    """
    given = {name: os.environ.get(name) for name in ENV_VARIABLES}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not any(given.values()):
        jax.distributed.initialize()
        return
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ValueError(f"multi-host start-up needs all of {', '.join(ENV_VARIABLES)}; "
                         f"{', '.join(missing)} not set")
    try:
        count, index = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
    except ValueError:
        raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                         f"{given['JAX_NUM_PROCESSES']!r} and {given['JAX_PROCESS_ID']!r}"
                         ) from None
    if not 0 <= index < count:
        raise ValueError(f"JAX_PROCESS_ID={index} must be in [0, JAX_NUM_PROCESSES={count})")
    jax.distributed.initialize(coordinator_address=given["JAX_COORDINATOR_ADDRESS"],
                               num_processes=count, process_id=index)
