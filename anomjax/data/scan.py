"""The one folder scanner: which files of a folder are images, for every reader and ``predict``.

A file is an image when its extension is one of :data:`~anomjax.data.image_io.IMAGE_EXTENSIONS`
(case-insensitive) and it is a regular file or a link to one. Skipped: hidden files and
folders (``.DS_Store``, macOS ``._*`` resource forks), ``__MACOSX`` folders, sub-folders whose
name looks like an image, and dangling or looping links. Names come back sorted, so every
reader sees the same images in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from anomjax.data.errors import DataError
from anomjax.data.image_io import IMAGE_EXTENSIONS, is_image_file

_SKIPPED_FOLDERS = ("__MACOSX",)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _SKIPPED_FOLDERS


def image_files(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and, with ``recursive``, its visible sub-folders), sorted.

    A missing folder gives ``[]``. Recursion does not follow links to folders (no loops).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(_walk(folder, recursive))


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for path in entries:
        if not _visible(path):
            continue
        if path.is_dir():
            if recursive and not path.is_symlink():
                yield from _walk(path, recursive)
        elif is_image_file(path) and path.is_file():
            yield path


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Image files named directly, plus the images of named folders (recursively, sorted).

    Raises :class:`DataError` for a path that does not exist and when nothing is found.
    """
    found: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [str(f) for f in image_files(p, recursive=True)]
        elif p.is_file():
            found.append(str(p))
        elif p.is_symlink():
            raise DataError(f"{p}: a dangling or looping symbolic link")
        else:
            raise DataError(f"{p}: no such file or folder")
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in "
                        f"{', '.join(map(str, paths))}")
    return found
