"""Exported scorers (``anomjax export``, :mod:`anomjax.deploy`): they score exactly like the
checkpoint, are lowered for CPU, CUDA and TPU, load without the method's code, and refuse
changed, truncated or too-new files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_cli_train import TINY_SETTINGS

from anomjax import deploy, runs
from anomjax.cli import main
from anomjax.data import read_image
from anomjax.data.synthetic import write_mvtec
from anomjax.data.transforms import prepare
from anomjax.methods.base import make_method, method_class, method_names
from anomjax.metrics import NormalizationStats
from anomjax.metrics import normalize as metrics_normalize
from anomjax.run_folder import load_run

#: method -> (image size, ``--set`` settings): the trained methods' tiny settings of
#: ``test_cli_train`` (shared programs, so the suite's compile cache serves both), and the
#: fitted methods at 64 px.
SETTINGS = {config.split("+")[0]: value for config, value in TINY_SETTINGS.items()}
SETTINGS.update({"padim": (64, []), "so_padim": (64, []), "spade": (64, []),
                 "patchcore": (64, [])})
#: Methods checked in the fast tier; the others are ``slow``.
FAST = ("padim", "ae")
ODD_BATCH = 3


def test_every_registered_method_is_covered():
    library = [n for n in method_names()  # not the toys other tests register
               if method_class(n).__module__.startswith("anomjax.")]
    assert sorted(SETTINGS) == sorted(library) and len(library) == 26


@pytest.fixture(scope="module")
def categories(tmp_path_factory) -> dict[int, Path]:
    """A tiny synthetic category at each image size (the images of ``test_cli_train``)."""
    out = {}
    for size in sorted({size for size, _ in SETTINGS.values()}):
        root = tmp_path_factory.mktemp(f"synthetic{size}")
        write_mvtec(root, categories=("wood",), n_train=8, n_test_good=2, n_test_defect=3,
                    image_size=size, seed=5, disable=True)
        out[size] = root / "wood"
    return out


def fit_and_export(name: str, category: Path, folder: Path) -> tuple[Path, Path]:
    """A tiny run of ``name`` (one optimiser step for a trained method) and its artefact."""
    size, settings = SETTINGS[name]
    method = make_method(name, dict(s.split("=", 1) for s in settings))
    run = folder / "run"
    runs.fit(method, category, run, image_size=size, batch_size=4, progress=False,
             **({"steps": 1} if method.kind == "train" else {}))
    artefact = folder / "artefact"
    runs.export(run, artefact, threshold=1.0)
    return run, artefact


def sample_images(category: Path, n: int) -> np.ndarray:
    """``n`` test images of the category as uint8 ``[n, H, W, 3]``."""
    files = sorted((category / "test").rglob("*.png"))[:n]
    return np.stack([read_image(f) for f in files])


def check_scores_like_the_checkpoint(name: str, category: Path, folder: Path) -> None:
    run, artefact = fit_and_export(name, category, folder)
    scorer = deploy.load(artefact)
    assert scorer.exported.platforms == ("cpu", "cuda", "tpu")
    assert scorer.method == name
    method, state, _ = load_run(run)
    score_fn = jax.jit(method.score)
    for batch in (1, ODD_BATCH):
        images = sample_images(category, batch)
        expected = score_fn(state, images.astype(np.float32) / 255.0)
        got = scorer.score(images)
        # Bit-identical on CPU for most methods; a few (e.g. DifferNet) compile the
        # shape-polymorphic program a little differently: within 1e-6 of the map's scale.
        for out, ref in ((got.maps, expected.maps), (got.scores, expected.image)):
            ref = np.asarray(ref)
            diff = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
            if os.environ.get("ANOMJAX_EXPORT_DIFFS"):  # record the tolerance reached
                with open(os.environ["ANOMJAX_EXPORT_DIFFS"], "a") as f:
                    f.write(json.dumps({"method": name, "batch": batch, "shape": ref.shape,
                                        "max_diff_over_scale": diff}) + "\n")
            assert diff <= 1e-6, (name, batch, ref.shape, diff)


@pytest.mark.parametrize("name", FAST)
def test_exported_scorer_equals_the_checkpoint(name, categories, tmp_path):
    check_scores_like_the_checkpoint(name, categories[SETTINGS[name][0]], tmp_path)


@pytest.mark.every_method  # deselected by default: `python -m pytest -m every_method`
@pytest.mark.parametrize("name", sorted(set(SETTINGS) - set(FAST)))
def test_exported_scorer_equals_the_checkpoint_every_method(name, categories, tmp_path):
    check_scores_like_the_checkpoint(name, categories[SETTINGS[name][0]], tmp_path)


# ---------------------------------------------------------------------------- one artefact


@pytest.fixture(scope="module")
def padim(categories, tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(run, artefact, category)`` of a tiny PaDiM run tested (threshold.json written)."""
    folder = tmp_path_factory.mktemp("padim")
    category = categories[64]
    run = folder / "run"
    runs.fit(make_method("padim"), category, run, image_size=64, batch_size=4,
             progress=False)
    runs.test(run, category, batch_size=4, progress=False)
    artefact = folder / "artefact"
    assert main(["export", str(run), "--out", str(artefact)]) == 0
    return run, artefact, category


def test_predict_on_the_artefact_equals_predict_on_the_run(padim, tmp_path):
    run, artefact, category = padim
    outs = {}
    for name, folder in (("run", run), ("artefact", artefact)):
        outs[name] = tmp_path / name
        assert main(["predict", str(folder), str(category / "test"), "--out",
                     str(outs[name]), "--batch-size", "4"]) == 0
    rows = [list(csv.DictReader(open(outs[k] / "scores.csv"))) for k in ("run", "artefact")]
    assert rows[0] == rows[1] and len(rows[0]) == 5
    for row in rows[0]:
        stem = row["heatmap"].replace("_heatmap.png", "")
        np.testing.assert_array_equal(np.load(outs["run"] / f"{stem}_map.npy"),
                                      np.load(outs["artefact"] / f"{stem}_map.npy"))


def test_manifest_records_what_a_deployment_needs(padim):
    run, artefact, _ = padim
    manifest = json.loads((artefact / deploy.MANIFEST_FILE).read_text())
    threshold = json.loads((run / "threshold.json").read_text())
    assert manifest["format_version"] == deploy.FORMAT_VERSION
    assert manifest["method"] == "padim" and manifest["image_size"] == 64
    assert manifest["input_size"] == [64, 64] and manifest["input_dtype"] == "uint8"
    assert manifest["resize_dtype"] == "uint8" and manifest["crop"] is None
    assert manifest["threshold"]["image_threshold"] == threshold["image_threshold"]
    assert set(manifest["versions"]) >= {"anomjax", "jax", "jaxlib", "numpy"}
    assert set(manifest["files"]) == {deploy.PROGRAM_FILE, deploy.STATE_FILE}
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]


def test_normalised_outputs_follow_the_runs_threshold(padim):
    run, artefact, category = padim
    scorer = deploy.load(artefact)
    images = sample_images(category, 5)
    scored = scorer.score(images)
    t = scorer.threshold
    assert np.array_equal(scored.labels, (scored.scores >= t["image_threshold"]).astype(int))
    for raw, normed in zip(scored.scores, scored.normalized_scores, strict=True):
        assert normed == runs.normalized(float(raw), t)  # predict's normalised score
    stats = NormalizationStats(threshold=np.float32(t["image_threshold"]),
                               min=np.float32(t["pixel_min"]), max=np.float32(t["pixel_max"]))
    # the library's jitted normalize: XLA divides by the range as a multiplication, 1 ulp off
    np.testing.assert_allclose(scored.normalized_maps,
                               np.asarray(metrics_normalize(scored.maps, stats)), atol=1e-7)
    at_threshold = deploy.normalize(t["image_threshold"], t["image_threshold"], 0.0, 1.0)
    assert at_threshold == np.float32(0.5)
    # --threshold overrides the recorded one, as predict's does
    assert deploy.load(artefact, threshold=-1e9).score(images).labels.all()


@pytest.mark.parametrize("resize_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("shape, image_size, crop", [((100, 77), 64, None),
                                                     ((64, 64), 64, None),
                                                     ((300, 200), (80, 96), 56)])
def test_loader_resize_reproduces_the_runs_rule(shape, image_size, crop, resize_dtype):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected, _ = prepare(image, None, image_size, crop, resize_dtype)
    got = deploy.prepare_image(image, image_size, crop, resize_dtype)
    assert got.dtype == (np.uint8 if resize_dtype == "uint8" else np.float32)
    as_float = got.astype(np.float32) / 255.0 if got.dtype == np.uint8 else got
    np.testing.assert_array_equal(as_float, expected)


def test_loader_imports_no_method_code(padim):
    _, artefact, category = padim
    code = ("import sys\nimport numpy as np\nfrom anomjax import deploy\n"
            f"scorer = deploy.load({str(artefact)!r})\n"
            "print(scorer.score(np.zeros((2, 64, 64, 3), np.uint8)).maps.shape)\n"
            "print(sorted(m for m in sys.modules if m.startswith('anomjax')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    shape, modules = proc.stdout.strip().splitlines()
    assert shape == "(2, 64, 64)"
    assert eval(modules) == ["anomjax", "anomjax.deploy", "anomjax.tiling", "anomjax.types"]


@pytest.mark.parametrize("name", [deploy.PROGRAM_FILE, deploy.STATE_FILE])
@pytest.mark.parametrize("damage", ["change", "truncate"])
def test_a_changed_or_truncated_file_is_refused_naming_it(padim, tmp_path, name, damage):
    import shutil

    artefact = tmp_path / "copy"
    shutil.copytree(padim[1], artefact)
    data = (artefact / name).read_bytes()
    (artefact / name).write_bytes(data[:-10] if damage == "truncate"
                                  else data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(deploy.ArtefactError, match=f"{name}: its SHA-256 differs"):
        deploy.load(artefact)
    assert main(["predict", str(artefact), str(padim[2] / "test"), "--out",
                 str(tmp_path / "p")]) == 2


def test_a_newer_format_version_is_refused_with_the_version_it_needs(padim, tmp_path):
    import shutil

    artefact = tmp_path / "copy"
    shutil.copytree(padim[1], artefact)
    manifest = json.loads((artefact / deploy.MANIFEST_FILE).read_text())
    manifest["format_version"] = deploy.FORMAT_VERSION + 1
    (artefact / deploy.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(deploy.ArtefactError, match=f"format version {deploy.FORMAT_VERSION + 1}"):
        deploy.load(artefact)


def test_export_refuses_a_non_empty_folder_and_replaces_an_artefact(padim, tmp_path, capsys):
    run = padim[0]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "a")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "a")]) == 2
    assert main(["export", str(run), "--out", str(tmp_path / "a"), "--overwrite"]) == 0
    deploy.load(tmp_path / "a")
