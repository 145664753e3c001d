"""Atomic file writes: write to a temporary name in the destination folder, then rename.

A reader (or a crash) therefore sees either the old file or the complete new one, never a
half-written file. The temporary name never matches the datastore's image patterns, and it
holds the writer's pid (``.<name>.tmp-<pid>-<random><suffix>``) so that a cleaner can
remove the leftovers of a killed writer without touching a live one's
(:func:`remove_dead_temp_files`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".emlabel-tmp"
# ".<dest name>.tmp-<pid>-<mkstemp's 8 random characters><suffixes>"
_TEMP_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[a-z0-9_]{8}(?:\.[^.]+)*$")


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-{os.getpid()}-"


def temp_file_pid(name: str) -> int | None:
    """The writer's pid in a temporary file name made here, or None for any other name."""
    match = _TEMP_NAME.match(name)
    return int(match.group("pid")) if match else None


def remove_dead_temp_files(
    folder: str | os.PathLike[str], is_alive: Callable[[int], bool]
) -> list[Path]:
    """Delete the temporary files in ``folder`` whose writer pid is not alive; return them.

    Files without a pid in their name (other programs', or older EMLabel versions') stay.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        pid = temp_file_pid(entry.name)
        if pid is None or not entry.is_file(follow_symlinks=False) or is_alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=TEMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    _default_mode(Path(tmp))
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy ``src`` onto ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def atomic_write_json(data: Any, dest: str | os.PathLike[str]) -> None:
    """Write ``data`` as indented JSON onto ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def atomic_write_with(
    writer: Callable[[Path], None],
    dest: str | os.PathLike[str],
    *,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Let ``writer`` fill a temporary file, then rename it onto ``dest``.

    The temporary file keeps ``dest``'s suffixes so writers that pick a format by
    extension (nibabel, torch) behave as for ``dest``. Give ``tmp_dir`` (same file
    system) when a watcher of ``dest``'s folder must not see the temporary file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tmp_dir) if tmp_dir is not None else dest.parent
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=suffix, dir=folder)
    os.close(fd)
    _default_mode(Path(tmp))
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def _default_mode(path: Path) -> None:
    """mkstemp creates 0600 files; give them the mode a plain ``open`` would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
