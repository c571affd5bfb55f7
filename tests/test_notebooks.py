"""Every notebook in ``notebooks/`` executes top to bottom (on the tiny data it ships with), and
its committed outputs name no path of the machine that ran it.

To re-execute the notebooks and write them back with their outputs scrubbed of machine paths:

    python tests/test_notebooks.py                  # all of them
    python tests/test_notebooks.py swap_backbones   # some, by name
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))

MACHINE_PATH = re.compile(r"/work/|/tmp/|/home/|/root/|/Users/|/private/var/|site-packages|"
                          r"dist-packages|[A-Za-z]:\\")
"""What an absolute path of the machine that executed a notebook looks like."""

_PACKAGES = re.compile(r"""[^\s'"]*?[/\\](?:site|dist)-packages[/\\]""")


def _output_texts(output: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``(container, key or index)`` of every text field of a cell output (stream text, error
    message and traceback lines, text/* data); images are left alone."""
    fields = [(output, k) for k in ("text", "evalue") if k in output]
    fields += [(output["traceback"], i) for i in range(len(output.get("traceback", [])))]
    data = output.get("data", {})
    fields += [(data, mime) for mime in data if mime.startswith("text/")]
    return fields


def machine_paths(notebook: Any) -> list[str]:
    """The lines of ``notebook``'s outputs that hold a machine path (:data:`MACHINE_PATH`)."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for container, key in _output_texts(output):
                text = container[key]
                text = "".join(text) if isinstance(text, list) else text
                found += [line for line in text.splitlines() if MACHINE_PATH.search(line)]
    return found


def scrub_text(text: str) -> str:
    """``text`` with this machine's paths replaced: installed packages by ``<env>/``, the
    Python environment, the repository, the temporary folder and the home folder by
    ``<env>``, ``<repo>``, ``<tmp>`` and ``<home>``."""
    text = _PACKAGES.sub("<env>/", text)
    for path, name in ((sys.prefix, "<env>"), (REPO_ROOT, "<repo>"),
                       (Path(tempfile.gettempdir()).resolve(), "<tmp>"),
                       (tempfile.gettempdir(), "<tmp>"), (Path.home(), "<home>")):
        if len(str(path)) > 1:
            text = text.replace(str(path), name)
    return text


def scrub(notebook: Any) -> None:
    """Replace the machine paths in ``notebook``'s outputs in place (:func:`scrub_text`)."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for container, key in _output_texts(output):
                text = container[key]
                container[key] = ([scrub_text(t) for t in text] if isinstance(text, list)
                                  else scrub_text(text))


def execute(notebook: Any, workdir: Path) -> None:
    """Run ``notebook`` in place, top to bottom, with ``workdir`` as its working folder and
    this checkout's ``anomjax`` first on the kernel's path."""
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    # raises CellExecutionError naming the failing cell
    client.execute(env={**os.environ, "PYTHONPATH": path})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_name_no_machine_path(path: Path):
    found = machine_paths(nbformat.read(path, as_version=4))
    assert not found, (f"{path.name} outputs hold machine paths (regenerate with `python "
                       f"tests/test_notebooks.py {path.stem}`): {found}")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path):
    notebook = nbformat.read(path, as_version=4)
    execute(notebook, tmp_path)
    errors = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    scrub(notebook)
    assert not machine_paths(notebook)


def main(names: list[str]) -> None:
    """Re-execute the notebooks ``names`` (all without names) and write them back scrubbed."""
    paths = [p for p in NOTEBOOKS if not names or p.stem in names]
    unknown = set(names) - {p.stem for p in paths}
    if unknown:
        raise SystemExit(f"no notebook named {sorted(unknown)} in {REPO_ROOT / 'notebooks'}")
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as workdir:
            execute(notebook, Path(workdir))
        scrub(notebook)
        if machine_paths(notebook):
            raise SystemExit(f"{path.name}: machine paths left after scrubbing, not written: "
                             f"{machine_paths(notebook)} (extend scrub_text)")
        nbformat.write(notebook, os.fspath(path))
        print(f"executed and scrubbed {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
