"""Atomic, durable file and directory writes; locks; cleanup of our own stale temps.

Everything the project writes that a later step reads (checkpoints, shards, reports) goes
through these helpers: the content is written under a temporary name in the same
directory and renamed into place only when complete, so a crash or Ctrl-C never leaves a
file or directory that looks finished but is not.

Durability: before the rename every written file and the temp directory are fsynced, and
after it the parent directory is, as DCP does for training checkpoints; otherwise a power
loss soon after "wrote X" can leave X empty or missing.

Temps: `.NAME.XXXXXXXX.tmp` beside the target. The writer holds an exclusive `flock` on
the temp for as long as it writes, so `clean_stale_temps` can tell an orphan of a killed
process (no lock held: delete it) from a live write (locked: leave it). The lock is taken
right after the temp is created; a cleaner running in that microsecond window is the one
race left, and only a concurrent write of the same target can hit it.

Permissions: results get the mode a plain `open()`/`mkdir()` would give them under the
current umask (mkstemp/mkdtemp, and some writers such as safetensors', create 0600/0700).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from olmo2.errors import DiskFullError, Olmo2Error

# Disk full as the OS says it and as safetensors' Rust writer words it
# ("I/O error: No space left on device (os error 28)"), which is no OSError.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def write_error(e: BaseException, path: str | os.PathLike, name_any: bool = True) -> BaseException | None:
    """A clearer exception for `e` raised while writing `path`, or None to keep `e`.

    Disk full becomes a one-line DiskFullError naming `path`; with `name_any`, an OSError
    that names no file (a plain `f.write` failing) gets `path` as its filename so the CLI
    can say where. (The atomic helpers pass False: their block may also read inputs.)
    """
    if isinstance(e, (DiskFullError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS or any(w in str(e) for w in _FULL_WORDS):
        return DiskFullError(f"{path}: no space left on device while writing it; free some space "
                             "(or write somewhere else) and rerun")
    if name_any and isinstance(e, OSError) and not e.filename and e.errno is not None:
        return OSError(e.errno, e.strerror, str(path))
    return None


@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike, name_any: bool = True) -> Iterator[None]:
    """Re-raise write failures inside the block as `write_error(e, path, name_any)` (see there)."""
    try:
        yield
    except BaseException as e:  # torch's DCP CheckpointException is a BaseException
        better = write_error(e, path, name_any)
        if better is None:
            raise
        raise better from e


class LockedError(Olmo2Error):
    """Another live olmo2 process holds the lock on an output."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames and new entries in it survive a power loss."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems (and Windows) do not fsync directories
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file under root, give it umask permissions, then fsync each directory."""
    file_mode, dir_mode = 0o666 & ~_umask(), 0o777 & ~_umask()
    for d, dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                continue
            os.chmod(p, file_mode)
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:
            if not os.path.islink(os.path.join(d, name)):
                os.chmod(os.path.join(d, name), dir_mode)
        fsync_dir(d)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temp file beside `path`; on clean exit fsync it and rename it to `path`
    (`atomic_path` with the file opened for you: same locking, permissions and errors)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_file`, for writers that open the file by name themselves (e.g. the gguf
    package): yield a temp path beside `path`; on clean exit fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _try_lock(fd)  # held until the rename: marks the temp as live for clean_stale_temps
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        better = write_error(e, path, name_any=False)
        if better is None:
            raise
        raise better from e
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on clean exit it replaces `path`.

    An existing `path` is moved aside first and deleted only after the new directory is in
    place, so at every instant either the old or the new complete directory exists. Stale
    temps of earlier, killed writes of the same `path` are removed first.
    """
    path = Path(path)
    here = Path.cwd()
    if path.name in ("", ".", "..") or Path(os.path.abspath(path)) in (here, *here.parents):
        # Replacing the directory we (and the user's shell) stand in would pull it away
        # from under both; Path('.').with_name() does not even work.
        raise Olmo2Error(f"{path}: is the current directory or one above it; write to a new "
                         f"directory instead (e.g. {os.path.join(str(path), 'model')})")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, name=path.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    lock_fd = os.open(tmp, os.O_RDONLY)
    _try_lock(lock_fd)
    try:
        yield tmp
        _sync_tree(tmp)  # also chmods: mkdtemp creates 0700, safetensors files 0600
        old = None
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        better = write_error(e, path, name_any=False)
        if better is None:
            raise
        raise better from e
    finally:
        os.close(lock_fd)


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A locked temp directory beside `beside` (same filesystem, our temp name), deleted on
    exit; a SIGKILL leaves it to the next write of `beside` (clean_stale_temps)."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(beside.parent, name=beside.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent))
    fd = os.open(tmp, os.O_RDONLY)
    _try_lock(fd)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete our orphaned temps in `directory` (of target `name` only, if given); return them.

    Ours: `.NAME.XXXXXXXX.tmp` (atomic_file/atomic_dir) that no live process has locked,
    and `.NAME.old-PID` (a replaced directory) whose process is gone.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for e in entries:
        m = _TMP.match(e) or _OLD.match(e)
        if not m or (name is not None and m.group("name") != name):
            continue
        p = d / e
        if m.re is _OLD:
            if _pid_alive(int(m.group("pid"))):
                continue
        else:
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                if not _try_lock(fd):
                    continue  # a live writer
                _remove(p)
            finally:
                os.close(fd)
            removed.append(p)
            continue
        _remove(p)
        removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a lock file, created if missing, or a directory).

    Raises LockedError (naming `what`) at once if another live process holds it; the lock
    goes away with the process, so a SIGKILL never leaves a stale lock behind.
    """
    p = Path(path)
    if p.is_dir():
        fd = os.open(p, os.O_RDONLY)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd):
            raise LockedError(f"{what}: another olmo2 process is writing it ({p} is locked); "
                              f"wait for it to finish or use another output directory")
        yield
    finally:
        os.close(fd)
