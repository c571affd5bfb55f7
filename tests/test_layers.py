"""The package's imports run one way, down the layers of the architecture.

``cli`` -> ``experiment`` -> the run API (``runs``, ``run_folder``, ``export``) -> ``evaluate``,
``train`` -> ``methods`` -> ``backbones``, ``data``, ``nn`` (and ``scoring``,
``visualize``) -> ``metrics`` (and the exported scorers' loader ``deploy`` and ``tiling``,
which import only jax and numpy) -> ``types`` (and the precision policy ``precision``).
Every import statement of every module counts, function-local ones too, read from the source
(not from what happens to be imported).
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anomjax"

#: Layer of each top-level part of the package; an import may only go to the same or a
#: lower layer.
LAYERS = {
    "__main__": 7, "cli": 7,
    "experiment": 6,
    "runs": 5, "run_folder": 5, "export": 5,
    "evaluate": 4, "train": 4, "compile_cache": 4,
    "methods": 3,
    "backbones": 2, "data": 2, "nn": 2, "scoring": 2, "visualize": 2, "_distrax": 2,
    "metrics": 1, "deploy": 1, "tiling": 1,
    "types": 0, "precision": 0, "__init__": 0,
}


def _part(module: str) -> str:
    """``anomjax.methods.base`` -> ``methods``; ``anomjax`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import of ``anomjax`` in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return [(line, name) for line, name in found if name.split(".")[0] == "anomjax"]


def upward_imports() -> list[str]:
    """Every import in the package that goes to a higher layer (or to an unknown part)."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _part(_module_name(path)) if path != PACKAGE / "__init__.py" else "__init__"
        for line, target in _imports(path):
            to = _part(target)
            if to not in LAYERS or source not in LAYERS:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target} (unlayered)")
            elif LAYERS[to] > LAYERS[source]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target} "
                           f"(layer {LAYERS[to]} above {source}'s {LAYERS[source]})")
    return bad


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


@pytest.mark.parametrize("source, target", [
    ("methods/stpm_like.py", "anomjax.train.loop"),
    ("nn/some_layer.py", "anomjax.methods.base"),
    ("experiment/run.py", "anomjax.cli"),
    ("runs.py", "anomjax.experiment.sweep"),
])
def test_the_check_finds_an_upward_import(tmp_path, monkeypatch, source, target):
    fake = tmp_path / "anomjax"
    (fake / source).parent.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("")
    (fake / source).write_text(f"def f():\n    import {target}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert len(upward_imports()) == 1
