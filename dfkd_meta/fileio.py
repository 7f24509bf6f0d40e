"""File helpers shared by every writer: hashing and atomic replacement."""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import dist
from .errors import DfkdError, UsageError, name_copy

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``path`` as a Path if it is an existing regular file, else raise UsageError."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: {what} does not exist; check the path")
    if not p.is_file():
        raise UsageError(f"{p}: {what} is not a regular file; pass the file itself")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{p}: {what} is not readable; check its permissions")
    return p


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary file lives in the same folder so the final ``os.replace`` is atomic: a crash
    or an exception leaves ``target`` untouched (old content or absent) and removes the temp file.
    Only the main process writes (``dist.require_main``).
    """
    dist.require_main(f"write {target}")
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{target}: cannot create folder {parent} ({exc.strerror}); choose a writable location") from None
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, flag: str = "{output}") -> Iterator[Path]:
    """Hold an exclusive lock on ``<target>.lock`` for one run writing ``target``; a second run on the same
    output fails at once with a UsageError instead of racing for the same partial and temporary files.

    The lock file is removed when the run ends. A run that finds the lock file it locked already
    replaced (the holder removed it between open and lock) tries once more on the new file.
    """
    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{target}: cannot create folder {lock.parent} ({exc.strerror}); choose a writable "
                         "location") from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks, as before
        yield lock
        return
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"{target}: cannot create {lock.name} ({exc.strerror}); choose a writable location") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UsageError(f"{target}: another run is writing it (process {holder or '?'}, lock {lock.name}); wait "
                             f"for it to finish, or pass another {flag}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise UsageError(f"{target}: could not lock {lock.name}; another run keeps replacing it")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# private copies: what is checked is what is read

@dataclass(frozen=True)
class Snapshot:
    """A private copy of ``source``: ``path`` holds the bytes read once from it, whose hash is ``sha256``."""

    source: Path
    path: Path
    sha256: str
    size: int


@contextlib.contextmanager
def _open_regular(p: Path, what: str):
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise UsageError(f"{p}: cannot open the {what} ({exc.strerror}); check the path and its permissions") from None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # what was opened, not what the name pointed at before
            raise UsageError(f"{p}: {what} is not a regular file; pass the file itself")
        yield fh


def _remove_folder(path: str, copies: list[Path]) -> None:
    for c in copies:
        name_copy(str(c), None)
    shutil.rmtree(path, ignore_errors=True)


class PrivateFolder:
    """A folder only this user can read or write (mode 0700), removed on ``close()`` or when collected.

    Untrusted files are copied here once, hashed while copied; every later check and read uses the copy, so
    a file replaced or rewritten at its original path after the check is never read. Child processes that
    read the copies run with this folder as their working directory.
    """

    def __init__(self, prefix: str = "dfkd-meta-read-"):
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.copies: list[Path] = []
        self._cleanup = weakref.finalize(self, _remove_folder, str(self.path), self.copies)

    def copy(self, source: str | os.PathLike, what: str = "file", name: str | None = None) -> Snapshot:
        """Copy ``source`` into the folder as ``name`` (default: its own name), hashing the bytes copied."""
        src = require_file(source, what)
        dst = self.path / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        with _open_regular(src, what) as fh, open(dst, "xb") as out:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
        os.chmod(dst, 0o400)
        self.copies.append(dst)
        name_copy(str(dst), str(src))
        return Snapshot(src, dst, h.hexdigest(), size)

    def close(self) -> None:
        self._cleanup()

    def __enter__(self) -> PrivateFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, DfkdError):  # the error outlives the copies: name the user's files in it now
            exc.template = exc.render_copies(exc.template)
        self.close()
