"""Atomic file writes: every file of a run folder, prediction and checkpoint is written to a temporary
name in its own folder and renamed into place, so a reader (or a resumed run) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from base.errors import UserInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cannot_write(path: Path, error: OSError) -> UserInputError:
    """The one-line error for a write that failed (disk full, read-only folder, no permission)."""
    return UserInputError(
        f"{path}: cannot write it ({error.strerror or error}); any earlier version of it is unchanged"
    )


@contextmanager
def atomic_target(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path (`.NAME.<random><suffix>` beside `path`) to write; renamed onto `path` when the
    block ends, with the permissions a plain open() would give. A failed write (disk full, read-only
    folder) becomes a `cannot_write` error, leaves no temporary file and the old file unchanged."""
    tmp = None
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(handle)
        tmp = Path(name)
        yield tmp
        # mkstemp creates 0600
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write bytes or text to `path` through `atomic_target`, synced to disk before the rename."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")
