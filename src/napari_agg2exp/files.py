"""Safe file output: atomic writes, locked and staged output folders, safe file names.

- :func:`atomic_write` writes a file through a temporary sibling and renames it into place, so a
  failure never leaves half a file; :func:`atomic_write_text` is the text case.
- :func:`staged_output` gives a command a hidden staging folder next to its output folder and renames
  it into place only when everything succeeded: the output folder is either complete or absent. With
  ``overwrite`` the old folder is replaced as a whole, so it holds exactly the new run's files.
- :class:`OutputLock` lets one run at a time write an output folder: a lock file ``.<name>.lock``
  next to it, held with ``flock`` (the kernel releases it when the holder dies, so a killed run's lock
  is stale and taken over) and naming the holder's pid and host.
- :func:`check_out_dir` checks an output folder before any work: not a file, not holding results
  (unless ``overwrite``), not in use, writable.
- :func:`safe_file_name` is the one rule that turns a class or RoI name into a file name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from napari_agg2exp.errors import Agg2ExpError

try:  # POSIX; elsewhere the lock is an exclusive create (a killed run's lock file must be deleted by hand)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MARKER",
    "OutputLock",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_out_dir",
    "check_writable",
    "default_permissions",
    "file_digest",
    "lock_holder",
    "make_staging_dir",
    "move_entries",
    "remove_stale_staging",
    "safe_file_name",
    "staged_output",
]

#: Hidden file every staged output folder holds: ``--overwrite`` replaces only folders that have it.
MARKER = ".agg2exp-output"

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


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _absolute(path: str | os.PathLike) -> Path:
    """The path with symlinks resolved (two spellings of one folder share one lock)."""
    return Path(path).expanduser().resolve()


def check_writable(path: str | os.PathLike, what: str = "--out") -> None:
    """Refuse (one line) an output path that cannot be created or written, before any work.

    Probes the path itself if it is a folder, else its nearest existing ancestor, by creating and
    removing a hidden file there (works for read-only file systems and for root too).
    """
    p = _absolute(path)
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise Agg2ExpError(f"cannot create {what} {path}: {anc} is a file, not a folder -- choose another {what}")
    try:
        fd, name = tempfile.mkstemp(prefix=".agg2exp-probe.", dir=anc)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise Agg2ExpError(f"cannot write {what} {path}: {anc} is not writable ({e.strerror or e}) -- choose an "
                           f"{what} in a folder you can write to") from None


def make_staging_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden folder ``parent/.<name>.partial.<random>`` with plain permissions."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial.", dir=parent))
    default_permissions(tmp, directory=True)
    return tmp


def remove_stale_staging(parent: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the hidden staging folders (``.<name>.partial.*``; any name if ``None``) that killed runs
    left in ``parent``. Call it only while holding the lock of the output they belong to: then no live
    run can be writing them."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    pattern = re.compile(r"\." + (re.escape(name) if name is not None else r".+") + r"\.partial\.[A-Za-z0-9_]+")
    removed = []
    for p in parent.iterdir():
        if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------- locks


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _read_holder(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def lock_holder(path: str | os.PathLike) -> dict | None:
    """``{"pid", "host", "since"}`` of the live run holding output ``path``'s lock, or ``None``."""
    out = _absolute(path)
    if out in OutputLock._held:
        return None  # this process holds it
    lock = _lock_path(out)
    if not lock.exists():
        return None
    if fcntl is None:  # pragma: no cover - without flock a lock file cannot be told stale: delete it by hand
        return _read_holder(lock) or {"pid": "?", "host": "?"}
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return _read_holder(lock) or {"pid": "?", "host": "?"}
        raise
    else:
        return None  # nobody holds it: a killed run's stale lock file
    finally:
        os.close(fd)


def _in_use(out: Path, info: dict) -> Agg2ExpError:
    since = f", since {info['since']}" if info.get("since") else ""
    return Agg2ExpError(f"output folder {out} is in use by another agg2exp run (pid {info.get('pid', '?')} on "
                        f"{info.get('host', '?')}{since}) -- wait for it to finish or choose another --out")


class OutputLock:
    """Hold the lock of output folder ``path`` (a context manager); re-entrant within one process.

    The lock file ``<parent>/.<name>.lock`` records the holder's pid and host. A second run is refused
    with an :class:`Agg2ExpError` naming them; a lock whose holder died (SIGKILL, power loss) is stale --
    the kernel dropped its ``flock`` -- and is taken over.
    """

    _held: dict[Path, int] = {}

    def __init__(self, path: str | os.PathLike) -> None:
        self.out = _absolute(path)
        self.path = _lock_path(self.out)
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        if self.out in OutputLock._held:
            OutputLock._held[self.out] += 1
            return self
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Agg2ExpError(f"cannot create the folder of --out {self.out} ({e.strerror or e}) -- choose an "
                               "--out in a folder you can write to") from None
        try:
            self._fd = self._acquire()
        except PermissionError as e:
            raise Agg2ExpError(f"cannot write {self.path} ({e.strerror}) -- choose an --out in a folder you can "
                               "write to") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(self._fd, 0)
        os.write(self._fd, (json.dumps(info) + "\n").encode())
        OutputLock._held[self.out] = 1
        return self

    def _acquire(self) -> int:
        while True:
            if fcntl is None:  # pragma: no cover - exclusive create
                try:
                    return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    raise _in_use(self.out, _read_holder(self.path)) from None
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise _in_use(self.out, _read_holder(self.path) or {}) from None
                raise
            try:  # the file we locked must still be the one at the path (a releasing holder unlinks it)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        n = OutputLock._held.get(self.out, 0)
        if n > 1:
            OutputLock._held[self.out] = n - 1
            return
        OutputLock._held.pop(self.out, None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still holding it (see _acquire)
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------- output folders


def _cwd() -> Path | None:
    try:
        return Path.cwd().resolve()
    except OSError:  # the current folder was removed
        return None


def check_out_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Check an output folder before any work; creates nothing.

    Refuses (one line each) a path that is a file; a folder that already holds results (unless
    ``overwrite``); with ``overwrite``, a non-empty folder that agg2exp did not write (no
    :data:`MARKER`) or that holds the current folder; a folder another run is writing; a folder
    that cannot be written.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise Agg2ExpError(f"output path {out} exists and is not a folder -- choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise Agg2ExpError(f"output folder {out} already holds results -- choose another --out or pass --overwrite")
        if not (out / MARKER).is_file():
            raise Agg2ExpError(f"output folder {out} was not written by agg2exp (it has no {MARKER}) -- --overwrite "
                               "replaces only agg2exp output folders: choose another --out or empty it yourself")
        cwd = _cwd()
        if cwd is not None and (cwd == _absolute(out) or _absolute(out) in cwd.parents):
            raise Agg2ExpError(f"--overwrite would replace {out}, which holds the current folder -- run from "
                               "elsewhere or choose another --out")
    info = lock_holder(out)
    if info:
        raise _in_use(out, info)
    check_writable(out)
    if out.is_dir():
        check_writable(out.resolve().parent)  # the folder is replaced by a rename in its parent
    return out


def move_entries(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename every entry of staging folder ``src`` into folder ``dst``, replacing same-named entries (a
    folder as a whole); each entry appears complete or not at all. For outputs added to a folder that
    holds other results (a cohort's analysis)."""
    src, dst = Path(src), Path(dst)
    for entry in sorted(src.iterdir()):
        dest = dst / entry.name
        if dest.is_dir() and not dest.is_symlink():
            aside = make_staging_dir(dst, entry.name)
            os.replace(dest, aside / "old")
            os.replace(entry, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(entry, dest)


def _commit(tmp: Path, out: Path) -> None:
    """Rename the finished staging folder onto ``out`` (replacing an old one as a whole)."""
    if not os.path.lexists(out):
        os.replace(tmp, out)
        return
    if os.path.ismount(out) or out == _cwd():  # cannot be renamed: swap the contents
        for entry in list(out.iterdir()):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in sorted(tmp.iterdir()):
            os.replace(entry, out / entry.name)
        return
    aside = make_staging_dir(out.parent, out.name)  # a killed run leaves it hidden; the next run removes it
    os.replace(out, aside / "old")
    os.replace(tmp, out)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Write outputs into a hidden staging folder; rename it onto ``path`` only on success.

    Refuses (before any work, see :func:`check_out_dir`) an output folder that already holds results
    unless ``overwrite``, one in use by another run, or one that cannot be written. Holds the folder's
    :class:`OutputLock` throughout and removes staging folders that killed runs left. On an error or
    cancel nothing is left behind; on success the folder holds exactly this run's files (an old folder
    is replaced as a whole) and :data:`MARKER`.
    """
    check_out_dir(path, overwrite)
    out = _absolute(path)
    with OutputLock(out):
        check_out_dir(out, overwrite)  # again under the lock: another run may have committed meanwhile
        remove_stale_staging(out.parent, out.name)
        tmp = make_staging_dir(out.parent, out.name)
        try:
            yield tmp
            atomic_write_text(tmp / MARKER, json.dumps({"written_by": "agg2exp", "pid": os.getpid(),
                                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            _commit(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
