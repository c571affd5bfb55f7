"""Research workflow: configs as code, single runs, sweeps, the benchmark protocol.

    from anomjax.experiment import base_config, run_experiment, run_sweep
    config = base_config("stpm", data="path/to/category", image_size=128, epochs=2)
    records = run_experiment(config, "runs/stpm")

See :mod:`anomjax.experiment.config` for the config fields.
"""

from anomjax.experiment.benchmark import category_folders, run_benchmark
from anomjax.experiment.config import apply_overrides, base_config, build_method, load_config
from anomjax.experiment.report import write_report
from anomjax.experiment.run import run_experiment
from anomjax.experiment.sweep import add_axes, expand, parse_sweep_args, run_sweep

__all__ = ["add_axes", "apply_overrides", "base_config", "build_method", "category_folders",
           "expand", "load_config", "parse_sweep_args", "run_benchmark", "run_experiment",
           "run_sweep", "write_report"]
