"""Configs as code: defaults from the method, typed overrides, config files, sweep expansion."""

import dataclasses

import ml_collections
import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve

from anomjax.cli import split_config_overrides
from anomjax.experiment.config import apply_overrides, base_config, build_method, load_config
from anomjax.experiment.report import mean_std, summary_markdown
from anomjax.experiment.run import roc_curve
from anomjax.experiment.sweep import expand, process_share, run_id
from anomjax.methods.base import method_class
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "experiments" / "configs"


def test_base_config_holds_every_hyper_parameter_default():
    config = base_config("patchcore")
    cls = method_class("patchcore")
    for field in dataclasses.fields(cls):
        assert config.method[field.name] == field.default, field.name
    assert build_method(config) == cls()


def test_overrides_are_typed_like_the_field_and_typos_are_errors():
    config = base_config("patchcore")
    apply_overrides(config, ["method.coreset_ratio=0.05", "image_size=64", "crop=48",
                             "method.layers=stage2,stage3"])
    assert config.method.coreset_ratio == 0.05 and config.image_size == 64
    assert config.crop == 48 and config.method.layers == ("stage2", "stage3")
    with pytest.raises(ValueError, match="no field 'method.coreset'"):
        apply_overrides(config, ["method.coreset=0.1"])
    with pytest.raises(ValueError, match="image_size=big"):
        apply_overrides(config, ["image_size=big"])


def test_method_hyper_parameters_are_checked_when_built():
    config = base_config("patchcore", **{"method.sigma": -2.0})
    with pytest.raises(ValueError, match="sigma=-2.0"):
        build_method(config)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_file_loads(path):
    config = load_config(f"{path}:image_size=64")
    if "method" in config:
        build_method(config)
        assert config.image_size == 64 and "seed" in config and "epochs" in config
    else:
        assert config.categories  # a benchmark protocol


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="bad.py: a config file must define get_config"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_config(str(tmp_path / "missing.py"))


def test_command_line_config_flags_are_split_out():
    rest, overrides = split_config_overrides(
        ["sweep", "--config", "c.py", "--config.data=/d", "--config.method.sigma", "2",
         "--out", "o"])
    assert rest == ["sweep", "--config", "c.py", "--out", "o"]
    assert overrides == ["data=/d", "method.sigma=2"]


def test_sweep_expansion_is_the_product_times_the_zip():
    config = base_config("padim")
    with config.unlocked():
        config.sweep = ml_collections.ConfigDict({"seed": (0, 1)})
        config.sweep_zip = ml_collections.ConfigDict({"image_size": (32, 64),
                                                      "method": {"sigma": (2.0, 4.0)}})
    runs = expand(config)
    assert runs == [{"seed": s, "image_size": i, "method.sigma": g}
                    for s in (0, 1) for i, g in ((32, 2.0), (64, 4.0))]
    assert len({run_id(r) for r in runs}) == 4
    with config.unlocked():
        config.sweep_zip.image_size = (32,)
    with pytest.raises(ValueError, match="same number of values"):
        expand(config)


@pytest.mark.parametrize("n, count", [(0, 1), (5, 1), (7, 2), (10, 3)])
def test_process_shares_cover_every_run_once(n, count):
    shares = [process_share(n, p, count) for p in range(count)]
    assert sorted(i for s in shares for i in s) == list(range(n))


def test_roc_curve_matches_scikit_learn():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # ties
    labels = (rng.random(200) < 0.4).astype(np.int32)
    fpr, tpr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_summary_is_mean_and_sample_std_over_seeds():
    values = [0.61, 0.72, 0.93]
    results = [{"run": f"s{i}", "swept": {"seed": i, "method.sigma": 4.0}, "method.name": "m",
                "category": "c", "image_auroc": v} for i, v in enumerate(values)]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    table = summary_markdown(results)
    assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in table
    assert "| m | c | 4.0 | 3 |" in table


def test_every_registered_method_has_a_config_file():
    from anomjax.methods import method_names

    ours = [m for m in method_names()
            if method_class(m).__module__.startswith("anomjax.methods.")]
    missing = [m for m in ours if not (CONFIGS / f"{m}.py").is_file()]
    assert not missing, f"no experiments/configs/<method>.py for {missing}"
