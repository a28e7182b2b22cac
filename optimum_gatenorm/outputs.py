"""Output that is never half-written, never replaces what we did not write, and never touches an input.

Every output goes to a temporary path beside its target (`.NAME.tmp-<pid>-*`) and is renamed into place on success;
a temporary path left by a killed run (its process is gone) is removed by the next run that writes beside it.

An existing directory is ours to replace (`overwrite=True`) only if we can prove it: it is empty, or

- it holds our marker (`OUTPUT_MARKER`, JSON with `"writer": "optimum-gatenorm"`) whose manifest (`"files"`)
  lists every file and folder in it: anything else inside (a note, a results folder) makes us refuse, naming it;
- or it was written by an earlier version (a marker without a manifest, or a pruned checkpoint's
  `gatenorm_report.json` that parses as one of our pruning reports) and holds only the files those versions wrote
  (`LEGACY_FILES`).

Never the current directory, one of its parents, the home directory or the filesystem root; and never a path
inside one of the command's inputs, nor one that contains an input (`inputs=`), with or without `overwrite`.

Only regular files and directories are outputs: a device node, FIFO or socket, and any path under `/dev`, `/proc`
or `/sys`, is refused. A symbolic link is followed: its target must pass the same rules, it is what gets written,
and the link itself stays a link.

One writer per output: `claim_output` (and every atomic writer here) holds a lock file beside the output
(`.NAME.lock`, an advisory `flock` naming the process) from the check to the rename; a second run for the same
output is refused naming the first. The kernel drops the lock of a killed process, so a lock file left by one is
taken over and removed by the next run.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InvalidConfigError, OutputExistsError, OutputInUseError, OutputNotWritableError
from .params import param
from .version import __version__


__all__ = [
    "LEGACY_FILES",
    "OUTPUT_MARKER",
    "atomic_output_dir",
    "atomic_output_file",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_not_an_input",
    "check_output_path",
    "check_writable_dir",
    "claim_output",
    "foreign_entries",
    "holds_outputs",
    "is_no_space",
    "is_our_output",
    "mark_output",
    "no_space_error",
    "output_claims",
    "output_lock",
    "remove_stale_temporaries",
    "require_pyplot",
]

logger = logging.getLogger(__name__)

OUTPUT_MARKER = ".optimum-gatenorm-output"
REPORT_FILE = "gatenorm_report.json"
# What versions before the manifest wrote into an output directory (pruned checkpoints, ONNX and Nemotron-NAS
# exports, conversions), at its top or in its `onnx/` folder; a legacy directory holding anything else is not ours.
LEGACY_FILES = (
    OUTPUT_MARKER,
    REPORT_FILE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "gatenorm_conversion.json",
    "model.onnx",
    "model.onnx_data",
    "model.onnx.data",
)
_LEGACY_FOLDERS = ("", "onnx")
_REPORT_KEYS = {"model_type", "criterion", "removed_layers", "num_hidden_layers"}
# A temporary path of ours: `.NAME.tmp-<pid>-<random>` (or `.old-`); before 0.5 without the pid.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")
_LEGACY_TEMPORARY_AGE = 3600.0  # seconds after which a temporary path without a pid counts as stale


def _protected_dirs() -> set[Path]:
    cwd = Path.cwd().resolve()
    return {cwd, *cwd.parents, Path.home().resolve(), Path(cwd.anchor)}


def _entries(directory: Path) -> list[str]:
    """Every file, folder and link under `directory`, as sorted POSIX paths relative to it."""
    out = []
    for root, dirnames, filenames in os.walk(directory):
        base = Path(root).relative_to(directory)
        out.extend((base / name).as_posix() for name in dirnames + filenames)
    return sorted(out)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def foreign_entries(path: str | Path) -> list[str]:
    """What, in directory `path`, optimum-gatenorm cannot prove it wrote (relative paths; all of them if none).

    An empty list means the directory is ours to replace: see the module docstring for the rule.
    """
    path = Path(path)
    entries = _entries(path)
    marker = _read_json(path / OUTPUT_MARKER)
    if isinstance(marker, dict) and marker.get("writer") == "optimum-gatenorm":
        if isinstance(marker.get("files"), list):
            written = {str(name) for name in marker["files"]} | {OUTPUT_MARKER}
            return [entry for entry in entries if entry not in written]
        legacy = True
    else:
        report = _read_json(path / REPORT_FILE)
        legacy = isinstance(report, dict) and _REPORT_KEYS <= report.keys()
    if not legacy:
        return entries
    return [entry for entry in entries if not _legacy_entry(entry)]


def _legacy_entry(entry: str) -> bool:
    """Whether `entry` (a relative POSIX path) is a file earlier versions wrote, or their `onnx/` folder."""
    if entry in _LEGACY_FOLDERS:
        return True
    folder, _, name = entry.rpartition("/")
    return folder in _LEGACY_FOLDERS and any(fnmatch.fnmatchcase(name, pattern) for pattern in LEGACY_FILES)


def is_our_output(path: str | Path) -> bool:
    """Whether directory `path` is ours to replace: empty, or everything in it provably written by us."""
    return not foreign_entries(path)


def _describe(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_not_an_input(path: str | Path, inputs: Iterable[tuple[str, str | Path]]) -> None:
    """Refuses an output that is one of the inputs, lies inside one, or (existing) contains one.

    Args:
        path: The output file or directory.
        inputs: `(what, path)` pairs, e.g. `("model", "ckpt/")`, `("text", "book.txt")`; missing paths are skipped.

    Raises:
        InvalidConfigError: If writing `path` could change an input.
    """
    output = Path(path).expanduser().resolve()
    for what, location in inputs:
        if location is None:
            continue
        source = Path(location).expanduser()
        if not (source.exists() or source.is_symlink()):
            continue
        source = source.resolve()
        if output == source:
            where = "is the input {what} itself" if source.is_file() else "is the input {what}'s own directory"
        elif source in output.parents:
            where = "is inside the input {what} " + str(source)
        elif output in source.parents and output.exists():
            where = "contains the input {what} " + str(source)
        else:
            continue
        raise InvalidConfigError(
            f"output {str(path)!r} {where.format(what=what)}; optimum-gatenorm never writes into its inputs, even "
            f"with {param('overwrite', True)}: choose an output elsewhere"
        )


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


# Where no output of ours belongs: device files, kernel and process views (`/proc/self/fd/1` included).
_SYSTEM_DIRS = (Path("/dev"), Path("/proc"), Path("/sys"))
_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _real_target(path: Path) -> Path:
    """Where writing `path` lands: `path` itself, or the target of the symbolic link(s) it is."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _link_chain(path: Path) -> list[Path]:
    """`path`, each hop of the symbolic link(s) it is, and where they end (`/proc/self/fd/1` is a hop too)."""
    chain = [Path(os.path.abspath(path))]
    for _ in range(40):  # the kernel's own limit on nested links
        try:
            target = os.readlink(chain[-1])
        except OSError:
            break
        chain.append(Path(os.path.abspath(os.path.join(chain[-1].parent, target))))
    return [*chain, Path(os.path.realpath(path))]


def _check_ordinary(path: Path, given: Path) -> None:
    """Refuses a system directory or a special file as an output (`given` is what the user named)."""
    real = Path(os.path.realpath(path))
    for hop in _link_chain(path):
        system = next((d for d in _SYSTEM_DIRS if hop == d or d in hop.parents), None)
        if system is not None:
            via = f" (it leads to {hop})" if hop != Path(os.path.abspath(given)) else ""
            raise OutputNotWritableError(
                f"output {str(given)!r}{via} is not writable here: {system} holds devices and kernel files, which "
                "optimum-gatenorm never writes, even with --overwrite; write to a regular path (or `-o -` for "
                "standard output)"
            )
    named = f"output {str(given)!r}" + (f" (a link to {real})" if given.is_symlink() else "")
    try:
        mode = real.stat().st_mode
    except OSError:
        return
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            raise OutputExistsError(
                f"{named} is {kind}, not a regular file or directory; optimum-gatenorm replaces only files and "
                "directories, even with --overwrite: give another path (or `-o -` for standard output)"
            )


def check_output_path(
    path: str | Path,
    overwrite: bool,
    *,
    directory: bool = False,
    inputs: Iterable[tuple[str, str | Path]] = (),
) -> Path:
    """Fails early, before any heavy work, if `path` cannot or must not be written.

    Args:
        path: The output file or directory. A symbolic link is followed: its target is checked (and returned).
        overwrite: Whether an existing output may be replaced.
        directory: `path` is an output directory (else a file).
        inputs: `(what, path)` pairs of the command's inputs (`check_not_an_input`).

    Returns:
        The path to write: `path`, or the target of the link it is.

    Raises:
        OutputExistsError: If `path` exists and `overwrite` is false, or it exists and is not ours to replace
            (a directory holding anything we cannot prove we wrote, the current directory or one of its parents,
            the home directory, the root; a directory where a file is expected or the other way round; a device
            node, FIFO or socket).
        InvalidConfigError: If `path` is, lies inside or contains an input, or an ancestor of it is a file.
        OutputNotWritableError: If the location cannot be written (or lies under /dev, /proc or /sys).
    """
    inputs = tuple(inputs)
    target = _check_output(Path(path).expanduser(), overwrite, directory, inputs)
    scope = _CLAIMS.get()
    if scope is not None:
        scope.enter_context(output_lock(target))
        _check_output(target, overwrite, directory, inputs)  # a run may have finished it since the first check
    return target


def _check_output(given: Path, overwrite: bool, directory: bool, inputs: tuple) -> Path:
    _check_ordinary(given, given)
    path = _real_target(given)
    exists = path.exists() or path.is_symlink() or given.is_symlink()
    if exists and overwrite and directory and path.is_dir() and path.resolve() in _protected_dirs():
        raise OutputExistsError(
            f"refusing to replace {str(given)!r} ({path.resolve()}): it is the current directory, one of its "
            "parents, the home directory or the root; give a new directory name"
        )
    check_not_an_input(path, inputs)
    if exists:
        if not overwrite:
            raise OutputExistsError(
                f"output {str(given)!r} already exists; pass {param('overwrite', True)} to replace it"
            )
        if directory and path.exists():
            if not path.is_dir():
                raise OutputExistsError(f"output {str(given)!r} is a file, not a directory; give a directory path")
            foreign = foreign_entries(path)
            if foreign:
                raise OutputExistsError(
                    f"refusing to replace {str(given)!r}: it holds {_describe(foreign)}, not written by "
                    f"optimum-gatenorm (not in its {OUTPUT_MARKER} manifest); move those out, or give a new "
                    "directory name"
                )
        elif path.is_dir():
            raise OutputExistsError(f"output {str(given)!r} is a directory; give a file path")
    check_writable_dir(path, "output")
    return path


# Locks this process holds: lock file -> [descriptor, folders created for it, holders]. `output_lock` is
# re-entrant, so a pipeline that claims its output may call writers that claim it again.
_HELD: dict[Path, list] = {}


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _holder(fd: int) -> str:
    """Who holds a lock, from what the holder wrote into the lock file."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 65536).decode("utf-8"))
        started = time.strftime("%H:%M:%S", time.localtime(float(data["started"])))
        return f"pid {int(data['pid'])}, `{data['command']}`, since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


@contextlib.contextmanager
def output_lock(path: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Holds the lock of output `path` (a file `.NAME.lock` beside it) while the block runs.

    The lock is an advisory `flock`, so the kernel releases it when its process dies, even by SIGKILL: a lock file
    left behind is taken over by the next run, which removes it when done. Folders created for the lock file are
    removed again at the end if still empty. Re-entrant within a process. Without `fcntl` (Windows) nothing is
    locked.

    Args:
        path: The output file or directory.
        wait: Wait for another process's lock to be released (logged) instead of refusing.

    Raises:
        OutputInUseError: If another live process holds it (and `wait` is false), naming that process.
    """
    lock = _lock_file(_real_target(Path(path).expanduser()).absolute())
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    if lock not in _HELD:
        _HELD[lock] = [*_take(fcntl, lock, path, wait), 0]
    _HELD[lock][2] += 1
    try:
        yield
    finally:
        _HELD[lock][2] -= 1
        if _HELD[lock][2] == 0:  # the last holder in this process (holders may end in any order)
            fd, created, _ = _HELD.pop(lock)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)
            _remove_created(created)


def _take(fcntl, lock: Path, path, wait: bool) -> tuple[int, list[Path]]:
    """Creates the folders `lock` needs, takes it, and says who holds it; returns its descriptor and the folders
    created."""
    created = []
    parent = lock.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_created(created)
        if is_no_space(error):
            raise no_space_error(path) from None
        raise OutputNotWritableError(f"cannot write output {str(path)!r}: {error.strerror or error}") from None
    try:
        fd = _acquire(fcntl, lock, path, wait)
    except BaseException:
        _remove_created(created)
        raise
    try:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "started": time.time()}).encode())
    except OSError:
        pass  # who holds it is a courtesy; the flock is the lock
    return fd, created


def _acquire(fcntl, lock: Path, path, wait: bool) -> int:
    """Opens and flocks `lock`; returns its descriptor (see `output_lock`)."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as error:
            if is_no_space(error):
                raise no_space_error(path) from None
            raise OutputNotWritableError(
                f"cannot write output {str(path)!r}: its lock {lock} cannot be created ({error.strerror or error})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            if wait:
                logger.info("Waiting for another run to finish writing %s (%s)", path, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                os.close(fd)
                raise OutputInUseError(
                    f"output {str(path)!r} is being written by another run ({holder}); wait for it to finish, or "
                    f"choose another output (its lock: {lock})"
                ) from None
        try:  # the holder before us may have removed the file between our open and our flock: lock the new one
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except OSError:
            current = False
        if current:
            return fd
        os.close(fd)


# The open `output_claims` scope of this context: outputs checked inside it stay locked until it closes.
_CLAIMS: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "optimum_gatenorm_output_claims", default=None
)


@contextlib.contextmanager
def output_claims() -> Iterator[None]:
    """Within this block, every output that passes `check_output_path` stays locked (`output_lock`) until the block
    ends, so that no other run can write it between the check and the write. Nested blocks share the outermost.

    The CLI runs every command in one; `prune_and_save`, the exporters and `convert_gguf` open their own.
    """
    if _CLAIMS.get() is not None:
        yield
        return
    with contextlib.ExitStack() as stack:
        token = _CLAIMS.set(stack)
        try:
            yield
        finally:
            _CLAIMS.reset(token)


def holds_outputs(function):
    """Decorator: runs `function` in `output_claims()`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with output_claims():
            return function(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def claim_output(
    path: str | Path,
    overwrite: bool,
    *,
    directory: bool = False,
    inputs: Iterable[tuple[str, str | Path]] = (),
) -> Iterator[Path]:
    """Checks output `path` (`check_output_path`) and holds its lock until the block ends; yields the (absolute)
    path to write. A second run for the same output is refused at once, naming this one."""
    with output_claims():
        yield check_output_path(path, overwrite, directory=directory, inputs=inputs).absolute()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Removes the temporary paths of `path` that killed runs left beside it; returns what was removed.

    A temporary path is stale when the process named in it is gone (or, for one written before 0.5 without a
    pid, when it has not changed for an hour). Those of running processes are left alone.
    """
    path = Path(path).expanduser().absolute()
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = _TEMPORARY.match(sibling.name)
        if not match or match["name"] != path.name:
            continue
        stale = False
        if match["pid"] is not None:
            stale = int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
        else:
            with contextlib.suppress(OSError):
                stale = time.time() - sibling.lstat().st_mtime > _LEGACY_TEMPORARY_AGE
        if stale:
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    sibling.unlink()
            removed.append(sibling)
    return removed


def is_no_space(error: BaseException) -> bool:
    """Whether `error` says the disk (or quota) is full, whatever library raised it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text or "os error 28" in text


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


def no_space_error(path: str | Path, needed: int | None = None, written: int | None = None) -> OutputNotWritableError:
    """The one-line error for a full disk while writing `path`: where, what it needs, what is free."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = _megabytes(shutil.disk_usage(probe).free) + " free"
    except OSError:
        free = "free space unknown"
    if needed:
        need = f"it needs about {_megabytes(needed)}, {free}"
    elif written:
        need = f"{_megabytes(written)} were written before it filled, {free}"
    else:
        need = free
    return OutputNotWritableError(
        f"no space left on the device of {str(path)!r} ({need}); free some space or write elsewhere (nothing was "
        "left behind)"
    )


def _check_space(path: Path, needed: int | None) -> None:
    if not needed:
        return
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    with contextlib.suppress(OSError):
        if shutil.disk_usage(probe).free < needed:
            raise no_space_error(path, needed)


def _size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


@contextlib.contextmanager
def atomic_output_dir(
    path: str | Path,
    overwrite: bool = False,
    *,
    inputs: Iterable[tuple[str, str | Path]] = (),
    expected_bytes: int | None = None,
) -> Iterator[Path]:
    """Yields a temporary directory beside `path`; on success it replaces `path`, on error it is removed.

    The finished directory holds `OUTPUT_MARKER` with the manifest of what is in it, so a later `overwrite=True`
    may replace it (and nothing else). Stale temporary directories of `path` from killed runs are removed first;
    folders created for `path` are removed again if the write fails. A full disk raises `OutputNotWritableError`
    (before anything is written when `expected_bytes` is known and does not fit).
    """
    inputs = tuple(inputs)
    with claim_output(path, overwrite, directory=True, inputs=inputs) as path:
        _check_space(path.parent, expected_bytes)
        remove_stale_temporaries(path)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new directory
        except OSError as error:
            if is_no_space(error):
                raise no_space_error(path, expected_bytes) from None
            raise OutputNotWritableError(f"cannot write output {str(path)!r}: {error.strerror or error}") from None
        try:
            try:
                yield tmp
                mark_output(tmp)
            except Exception as error:
                if is_no_space(error):
                    raise no_space_error(path, expected_bytes, _size(tmp)) from None
                raise
            check_output_path(path, overwrite, directory=True, inputs=inputs)  # something may have appeared meanwhile
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _remove_created(created: list[Path]) -> None:
    """Removes the folders we created for an output that was not written, innermost first, if still empty."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def mark_output(directory: Path) -> None:
    """Writes our marker into `directory` with the manifest of everything in it, so that a later
    `overwrite=True` may replace it (and refuses to while anything else is there)."""
    files = [entry for entry in _entries(directory) if entry != OUTPUT_MARKER]
    marker = {"writer": "optimum-gatenorm", "version": __version__, "files": files}
    (directory / OUTPUT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(
    path: str | Path, text: str, overwrite: bool = False, *, inputs: Iterable[tuple[str, str | Path]] = ()
) -> Path:
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite, inputs=inputs)


def atomic_write_bytes(
    path: str | Path, data: bytes, overwrite: bool = False, *, inputs: Iterable[tuple[str, str | Path]] = ()
) -> Path:
    """Writes `data` to `path` through a temporary file and a rename."""
    with atomic_output_file(path, overwrite, inputs=inputs, expected_bytes=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path).expanduser().absolute()


@contextlib.contextmanager
def atomic_output_file(
    path: str | Path,
    overwrite: bool = False,
    *,
    inputs: Iterable[tuple[str, str | Path]] = (),
    expected_bytes: int | None = None,
) -> Iterator[Path]:
    """Yields a temporary file path beside `path` to write; on success it replaces `path`, on error it is removed.

    The same checks as `atomic_output_dir` (inputs, overwrite, stale temporaries, full disk) and its lock.
    """
    with claim_output(path, overwrite, inputs=inputs) as path:
        _check_space(path.parent, expected_bytes)
        remove_stale_temporaries(path)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError as error:
            if is_no_space(error):
                raise no_space_error(path, expected_bytes) from None
            raise OutputNotWritableError(f"cannot write output {str(path)!r}: {error.strerror or error}") from None
        try:
            yield tmp
            os.replace(tmp, path)
        except Exception as error:
            if is_no_space(error):
                raise no_space_error(path, expected_bytes) from None
            raise
        finally:
            if tmp.exists():
                tmp.unlink()


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
