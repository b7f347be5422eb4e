"""How a run takes its workdirs: refuse what is not its own, lock, verify, clear its own leftovers, record.

`opened` is the one protocol of every caller that writes or reads stages
(pipeline.run, conditioned.run, stage copies, the experiments' stage readers):

1. before any write: a folder that is neither new, empty nor a dwf_jax workdir
   is refused, and so is a link where the run would write or delete;
2. the lock is taken (a new file, never through a link), and only then are the
   finished stages verified, so a stage another run sealed meanwhile is checked
   like any other; a run that passes writes its PID into the lock;
3. leftovers of interrupted writes are removed: only names dwf_jax makes
   (`*.dwf-partial`, orbax's temporary folders of those, `.*.dwf-tmp-*`);
4. the workdir's format (and the run's config) are recorded.
"""

import contextlib
import errno
import fcntl
import os
import pathlib
import shutil
from collections.abc import Iterable, Iterator, Sequence

import ml_collections
from absl import logging

from dwf_jax import checkpoints, durable, processes
from dwf_jax.checkpoints import PARTIAL_SUFFIX, CheckpointError
from dwf_jax.settings import STAGE_KEYS, differences
from dwf_jax.workdir import (
    FLOW_CHECKPOINTS,
    FORMAT_FILE,
    LOCK_FILE,
    MATRIX_FILES,
    TIMINGS_FILE,
    ZOO_CHUNKS,
    Workdir,
    WorkdirConfigMismatch,
)

LEFTOVER_PATTERNS = (
    f"*{PARTIAL_SUFFIX}",
    f"*{PARTIAL_SUFFIX}.orbax-checkpoint-tmp*",
    f".*{durable.TEMPORARY_MARK}*",
)


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir."""


class WorkdirNotWritable(PermissionError):
    """The workdir cannot be created or written."""


class NotAWorkdir(ValueError):
    """An existing, non-empty folder that no dwf_jax run made."""


class WorkdirLink(ValueError):
    """A link where a run would write or delete: it would act outside its workdir."""


def link_error(path: pathlib.Path) -> WorkdirLink:
    return WorkdirLink(
        f"{path} is a symbolic link: dwf_jax writes and deletes only inside its workdir, never through a link; "
        "remove the link or use another --workdir"
    )


def refuse_foreign(work: Workdir) -> None:
    """Refuse a folder dwf_jax did not make, unless it is empty: a run must never clean up a user's folder."""
    path = work.path
    if not path.exists():
        return
    if not path.is_dir():
        raise WorkdirNotWritable(f"workdir {path} is a file, not a folder; choose another --workdir")
    # Stages without a format: an older dwf_jax. A `tensorboard` folder alone is no sign: users keep their own, and
    # a run has written its format before its first curve.
    ours = (FORMAT_FILE, ZOO_CHUNKS, FLOW_CHECKPOINTS, *STAGE_KEYS)
    if any(os.path.lexists(path / name) for name in ours):
        return
    others = sorted(entry.name for entry in path.iterdir() if not _made_by_a_run(entry))
    if others:
        raise NotAWorkdir(
            f"workdir {path} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and is not "
            f"a dwf_jax workdir (no {FORMAT_FILE}); choose a new or empty folder as --workdir"
        )


def _made_by_a_run(entry: pathlib.Path) -> bool:
    """The lock file, or a workdir of a run (the zoos of a conditioned run live inside its workdir)."""
    if entry.name == LOCK_FILE:
        return True
    if entry.is_symlink() or not entry.is_dir():
        return False
    return (entry / FORMAT_FILE).exists() or {child.name for child in entry.iterdir()} <= {LOCK_FILE}


def refuse_links(work: Workdir) -> None:
    """Refuse a link at any name the run writes or deletes (the workdir itself may be one: the user chose it)."""
    names = [*work.owned_names(), *(entry.name for pattern in LEFTOVER_PATTERNS for entry in work.path.glob(pattern))]
    for name in names:
        if (work.path / name).is_symlink():
            raise link_error(work.path / name)
    for folder in (work.path / ZOO_CHUNKS, work.flow_checkpoints, work.tensorboard):
        for root, folders, files in os.walk(folder):
            for name in (*folders, *files):
                if os.path.islink(os.path.join(root, name)):
                    raise link_error(pathlib.Path(root, name))


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[int]:
    """Hold an exclusive lock on the workdir for the whole run (yields the lock file's descriptor).

    flock is released by the kernel when the process dies, even by SIGKILL, so a
    killed run never leaves a stale lock behind. The lock file is opened without
    following links, so a planted link never gets the PID written through it.
    """
    lock = workdir / LOCK_FILE
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise link_error(lock) from None
        if error.errno in durable.DISK_FULL_ERRNOS:
            raise durable.disk_full(lock, error) from None
        raise WorkdirNotWritable(
            f"workdir {workdir} is not writable ({error.strerror}); choose another --workdir"
        ) from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            raise WorkdirBusy(
                f"workdir {workdir} is in use by another run (pid {holder or 'unknown'}); "
                "wait for it to finish or use another --workdir"
            ) from None
        yield descriptor
    finally:
        os.close(descriptor)


def _announce(descriptor: int, lock: pathlib.Path) -> None:
    """Write this process's PID into the held lock file, for the message another run gets."""
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    durable.write_all(descriptor, str(os.getpid()).encode(), lock)


def remove_leftovers(work: Workdir) -> None:
    """Delete what this program's interrupted writes left behind; only under the lock, so no write is in flight."""
    chunks = work.path / ZOO_CHUNKS
    shares = [share for chunk in chunks.glob("models_*") for share in chunk.glob("process_*")]
    folders = [work.path, work.flow_checkpoints, *chunks.glob("models_*"), *shares]
    for folder in folders:
        for pattern in LEFTOVER_PATTERNS:
            for leftover in folder.glob(pattern):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()


@contextlib.contextmanager
def opened(
    works: Sequence[Workdir], configs: Sequence[ml_collections.ConfigDict | None] = (), record: bool = True
) -> Iterator[None]:
    """Hold `works` for a run: refused, locked, verified, cleaned and recorded in the order the module names.

    `configs[i]` is recorded in `works[i]` (None or absent: only the format). A reader passes `record=False`.
    With several processes the writer alone does all this; the others wait for it (and for its error).
    """
    with contextlib.ExitStack() as stack:
        processes.writer_does(lambda: _hold(stack, works, configs, record))
        yield


def _hold(
    stack: contextlib.ExitStack,
    works: Sequence[Workdir],
    configs: Sequence[ml_collections.ConfigDict | None],
    record: bool,
) -> None:
    for work in works:
        refuse_foreign(work)
        refuse_links(work)
    locks = [stack.enter_context(locked(work.path)) for work in works]
    for work in works:
        refuse_links(work)
        work.check()
    for work, descriptor in zip(works, locks, strict=True):
        _announce(descriptor, work.path / LOCK_FILE)
    for index, work in enumerate(works):
        remove_leftovers(work)
        config = configs[index] if index < len(configs) else None
        if config is not None:
            work.record_config(config)
        elif record:
            work.record_format()


def copy_stages(source: Workdir, target: Workdir, stages: Iterable[str], ignore: tuple[str, ...] = ()) -> None:
    """Take finished stages (dir and matrix file) of another workdir, computed with the target's settings.

    Both workdirs are held as a run holds them (`opened`). Stages the target has
    are kept; one whose results computed from it remain is refused, as `Workdir.run`
    refuses it. Each is verified, then copied under a temporary name and renamed,
    so an interrupted copy never looks like a finished stage.
    """
    with opened([target, source], record=False):
        target.record_format()
        for name in stages:
            if not source.done(name) or target.done(name):
                continue
            stale = target.derived_from(name)
            if stale:
                raise CheckpointError(
                    f"stage {name} is missing in {target.path} while results computed from it remain "
                    f"({', '.join(stale)}); delete those too to take {name} from {source.path}"
                )
            changed = differences(source.verify(name), target.settings[name], ignore)
            if changed:
                raise WorkdirConfigMismatch(
                    f"stage {name} of {source.path} was computed with other settings ({', '.join(changed[:5])})"
                )
            if name in MATRIX_FILES:
                with durable.atomic_path(target.matrix_file(name)) as temporary:
                    shutil.copyfile(source.matrix_file(name), temporary)
            partial = target.stage(name).with_name(name + PARTIAL_SUFFIX)
            shutil.copytree(source.stage(name), partial)
            durable.fsync_tree(partial)
            durable.place(partial, target.stage(name))
            target.timings.setdefault(name, source.timings.get(name, float("nan")))
            logging.info("stage %-9s taken from %s", name, source.path)
        checkpoints.save_json(target.path / TIMINGS_FILE, target.timings)
