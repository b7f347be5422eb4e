"""Files written whole or not at all, durable once in place: a full disk is an error, never a short file.

A file a run keeps is written under a temporary name that only dwf_jax makes
(`.<name>.dwf-tmp-<hex>`), every write checked, then fsync'ed, renamed onto its
name and its folder fsync'ed: a power cut after the rename never leaves a short
file under a final name. Files are opened without following links and created
with the umask's mode, like any other file the user makes.
"""

import contextlib
import errno
import os
import pathlib
import secrets
from collections.abc import Iterator

TEMPORARY_MARK = ".dwf-tmp-"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotEnoughSpace(OSError):
    """The disk (or the user's quota) cannot hold what a run writes."""


def disk_full(path: str | os.PathLike, error: OSError | None = None) -> NotEnoughSpace:
    """The one-line error of a write that ran out of space."""
    cause = f" ({error.strerror})" if error is not None and error.strerror else ""
    full = NotEnoughSpace(
        f"disk full: {path} could not be written{cause}. Free some space and rerun the same command: "
        "finished stages are kept"
    )
    full.errno = errno.ENOSPC
    return full


def full_disk_cause(error: BaseException | None) -> OSError | None:
    """The out-of-space error in an exception's chain, if any (orbax and matplotlib wrap or re-raise them)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _write(descriptor: int, data: memoryview) -> int:
    """One write(2): the seam where tests put a disk that fills up."""
    return os.write(descriptor, data)


def write_all(descriptor: int, data: bytes | memoryview, path: str | os.PathLike) -> None:
    """Write every byte of `data` (short writes continued), or raise NotEnoughSpace naming `path`."""
    view = memoryview(data).cast("B")
    while view:
        try:
            written = _write(descriptor, view)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise disk_full(path, error) from error
            raise
        if written <= 0:
            raise disk_full(path)
        view = view[written:]


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: pathlib.Path) -> None:
    """fsync every file and folder under `folder` (a copied stage), then `folder` itself."""
    for path in folder.rglob("*"):
        fsync_path(path)
    fsync_path(folder)


def place(temporary: pathlib.Path, path: pathlib.Path) -> None:
    """Rename a finished, fsync'ed file or folder onto `path` and make the rename itself durable."""
    os.replace(temporary, path)
    fsync_path(path.parent)


def temporary_name(path: pathlib.Path) -> pathlib.Path:
    """A fresh name beside `path` that only dwf_jax makes (what a run may delete as its own leftover)."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{secrets.token_hex(4)}")


def create(path: pathlib.Path) -> int:
    """A new file, never through a link, with the mode the umask gives; its descriptor, open for writing."""
    return os.open(path, _NEW_FILE, 0o666)


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary name beside `path` for a writer that opens files itself (matplotlib, shutil.copyfile).

    Renamed onto `path`, durably, only when the block ends cleanly; removed otherwise.
    """
    temporary = temporary_name(path)
    os.close(create(temporary))
    try:
        yield temporary
        fsync_path(temporary)
        place(temporary, path)
    except OSError as error:
        if full_disk_cause(error) is not None and not isinstance(error, NotEnoughSpace):
            raise disk_full(path, full_disk_cause(error)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: pathlib.Path, data: bytes) -> None:
    """`path` holds exactly `data`, or keeps what it held before."""
    with atomic_path(path) as temporary:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_all(descriptor, data, path)
        finally:
            os.close(descriptor)
