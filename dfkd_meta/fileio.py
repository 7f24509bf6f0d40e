"""File helpers shared by every writer: hashing and atomic replacement."""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from . import dist
from .errors import UsageError

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
