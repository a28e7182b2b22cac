"""Output that is never half-written: temp path first, rename into place on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidConfigError, OutputExistsError


__all__ = ["atomic_output_dir", "atomic_save_figure", "atomic_write_bytes", "atomic_write_text", "check_output_path"]


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Fails early (before any heavy work) if `path` exists and `overwrite` is false.

    Raises:
        OutputExistsError: If `path` exists and `overwrite` is false.
        InvalidConfigError: If the parent of `path` is not a directory.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"output {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise InvalidConfigError(f"cannot write {path}: {parent} is not a directory")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary directory beside `path`; on success it replaces `path`, on error it is removed."""
    path = check_output_path(path, overwrite).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new directory
    try:
        yield tmp
        check_output_path(path, overwrite)  # something may have appeared meanwhile
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Writes `data` to `path` through a temporary file and a rename."""
    path = check_output_path(path, overwrite).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise OutputExistsError(f"output {str(path)!r} is a directory; give a file path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_save_figure(fig, path: str | Path, overwrite: bool = False) -> Path:
    """Saves a matplotlib figure as PNG through a temporary file and a rename, then closes it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
