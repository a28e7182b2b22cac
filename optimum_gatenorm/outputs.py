"""Output that is never half-written, and never replaces what we did not write.

Every output goes to a temporary path beside its target and is renamed into place on success. Directories we
write carry a marker file (`OUTPUT_MARKER`); `overwrite=True` replaces a directory only if it holds that marker
(or a pruned checkpoint's `gatenorm_report.json`, written by earlier versions) or is empty, and never the current
directory, one of its parents, the home directory or the filesystem root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidConfigError, OutputExistsError, OutputNotWritableError
from .version import __version__


__all__ = [
    "OUTPUT_MARKER",
    "atomic_output_dir",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "check_writable_dir",
    "is_our_output",
    "mark_output",
    "require_pyplot",
]

OUTPUT_MARKER = ".optimum-gatenorm-output"
# Directories that count as ours without the marker: pruned checkpoints written before the marker existed.
_LEGACY_MARKERS = ("gatenorm_report.json",)


def _protected_dirs() -> set[Path]:
    cwd = Path.cwd().resolve()
    return {cwd, *cwd.parents, Path.home().resolve(), Path(cwd.anchor)}


def is_our_output(path: Path) -> bool:
    """Whether directory `path` was written by optimum-gatenorm (it holds our marker or a pruning report)."""
    return any((path / name).is_file() for name in (OUTPUT_MARKER, *_LEGACY_MARKERS))


def check_writable_dir(path: str | Path, what: str = "output", fix: str = "choose another location") -> None:
    """Fails unless `path` could be created: the nearest existing ancestor of it is a writable directory.

    Creates nothing: the probe file it writes into that ancestor is removed at once. A real write is tried
    (not `os.access`), so read-only filesystems are caught also when running as root.

    Raises:
        InvalidConfigError: If an ancestor of `path` is a file.
        OutputNotWritableError: If the nearest existing ancestor cannot be written.
    """
    path = Path(path).expanduser().absolute()
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidConfigError(f"cannot write {what} {str(path)!r}: {ancestor} is a file, not a directory; {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gatenorm-probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot write {what} {str(path)!r}: {ancestor} is not writable ({error.strerror or error}); {fix}"
        ) from None


def check_output_path(path: str | Path, overwrite: bool, *, directory: bool = False) -> Path:
    """Fails early, before any heavy work, if `path` cannot or must not be written.

    Args:
        path: The output file or directory.
        overwrite: Whether an existing output may be replaced.
        directory: `path` is an output directory (else a file).

    Raises:
        OutputExistsError: If `path` exists and `overwrite` is false, or it exists and is not ours to replace
            (a non-empty directory without our marker, the current directory or one of its parents, the home
            directory, the root; a directory where a file is expected or the other way round).
        InvalidConfigError: If an ancestor of `path` is a file.
        OutputNotWritableError: If the location cannot be written.
    """
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"output {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it"
            )
        resolved = path.resolve()
        if directory:
            if not path.is_dir():
                raise OutputExistsError(f"output {str(path)!r} is a file, not a directory; give a directory path")
            if resolved in _protected_dirs():
                raise OutputExistsError(
                    f"refusing to replace {str(path)!r} ({resolved}): it is the current directory, one of its "
                    "parents, the home directory or the root; give a new directory name"
                )
            if any(path.iterdir()) and not is_our_output(path):
                raise OutputExistsError(
                    f"refusing to replace {str(path)!r}: it is not empty and was not written by optimum-gatenorm "
                    f"(no {OUTPUT_MARKER}); give a new directory name or remove it yourself"
                )
        elif path.is_dir():
            raise OutputExistsError(f"output {str(path)!r} is a directory; give a file path")
    check_writable_dir(path, "output")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary directory beside `path`; on success it replaces `path`, on error it is removed.

    The finished directory holds `OUTPUT_MARKER`, so a later `overwrite=True` may replace it.
    """
    path = check_output_path(path, overwrite, directory=True).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new directory
    except OSError as error:
        raise OutputNotWritableError(f"cannot write output {str(path)!r}: {error.strerror or error}") from None
    try:
        yield tmp
        mark_output(tmp)
        check_output_path(path, overwrite, directory=True)  # something may have appeared meanwhile
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


def mark_output(directory: Path) -> None:
    """Writes our marker into `directory`, so that a later `overwrite=True` may replace it."""
    (directory / OUTPUT_MARKER).write_text(json.dumps({"writer": "optimum-gatenorm", "version": __version__}) + "\n")


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        raise OutputNotWritableError(f"cannot write output {str(path)!r}: {error.strerror or error}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def require_pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend.

    Raises:
        InvalidConfigError: If matplotlib is not installed, with the install command.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidConfigError('plots need matplotlib: pip install -e ".[plot]"') from None
    return plt


def atomic_save_figure(fig, path: str | Path, overwrite: bool = False) -> Path:
    """Saves a matplotlib figure as PNG through a temporary file and a rename, then closes it."""
    import io

    plt = require_pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
