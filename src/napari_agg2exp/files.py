"""Safe file output: one atomic write, staged output folders, safe file names.

- :func:`atomic_write` writes a file through a temporary sibling and renames it into place, so a
  failure never leaves half a file; :func:`atomic_write_text` is the text case.
- :func:`staged_output` gives a command a temporary folder next to its output folder and moves the
  results into place only when everything succeeded.
- :func:`safe_file_name` is the one rule that turns a class or RoI name into a file name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from napari_agg2exp.errors import Agg2ExpError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_out_dir",
    "default_permissions",
    "make_staging_dir",
    "safe_file_name",
    "staged_output",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file/folder (created 0600/0700) the permissions a plain create would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder (with the same
    suffixes, so format-by-extension writers work), which is then renamed onto ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix="".join(p.suffixes) or ".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        default_permissions(tmp)
        write(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def safe_file_name(name: str, fallback: str = "unnamed") -> str:
    """A file-name-safe stem for a class or RoI name: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", str(name)).strip("._") or fallback


def make_staging_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden folder ``parent/.<name>.partial.<random>`` with plain permissions."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial.", dir=parent))
    default_permissions(tmp, directory=True)
    return tmp


def check_out_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output folder that already holds results (unless ``overwrite``); creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise Agg2ExpError(f"output path {out} exists and is not a folder -- choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise Agg2ExpError(f"output folder {out} already holds results -- choose another --out or pass --overwrite")
    return out


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Write outputs into a temporary folder; move them into ``path`` only on success.

    Refuses (before any work) an output folder that already holds results unless ``overwrite``.
    On an error or cancel nothing is left behind: no partial output files.
    """
    out = check_out_dir(path, overwrite)
    tmp = make_staging_dir(out.parent, out.name)
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            dest = out / entry.name
            if dest.is_dir() and entry.is_dir():
                shutil.rmtree(dest)
            os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
