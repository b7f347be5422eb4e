"""One run over several processes (hosts) joined by jax.distributed: who writes, and how they stay in step.

Every process runs the same pipeline: the stages that split the model axis
(`dwf_jax.sharding`) need all of them, and the others are computed by each from
the same inputs to the same numbers. The workdir lies on a filesystem every
process sees, and the first process is its one writer: it holds the lock, writes
the stages, the flow's checkpoints and the report, while the others read
finished stages. The zoo's training checkpoints are the exception: each process
saves and reads only its own models (`ShareCheckpoints`). What the writer does
alone (`writer_does`) ends in a collective that tells every process whether it
worked, so they leave it together, with the writer's error if it failed.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from dwf_jax.checkpoints import CheckpointError, TrainingCheckpoints
from dwf_jax.sharding import pad_models, process_rows

PyTree = Any
Result = TypeVar("Result")
_MESSAGE_BYTES = 4096


class WriterFailed(RuntimeError):
    """What the first process (the writer) met, raised on every other process."""


def connect(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Join this process to a run of `num_processes` (JAX's own runtime); CPU collectives go through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


def several() -> bool:
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the run's shared files (the first process; a lone process always)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for in one process)."""
    if several():
        multihost_utils.sync_global_devices(name)


def _from_writer(text: str) -> str:
    """The writer's `text` (at most 4096 bytes), received by every process."""
    buffer = np.zeros(_MESSAGE_BYTES, np.uint8)
    encoded = text.encode()[:_MESSAGE_BYTES]
    buffer[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(received).rstrip(b"\0").decode(errors="replace")


def writer_does(action: Callable[[], Result]) -> Result | None:
    """`action()` on the writer alone; every process returns once it is done, or raises if it failed."""
    if not several():
        return action()
    failure, result = None, None
    if is_writer():
        try:
            result = action()
        except Exception as error:
            failure = error
    message = _from_writer("" if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message:
        raise WriterFailed(f"the first process (the writer) stopped the run: {message}")
    return result


def _leaves_from_writer(tree: PyTree) -> list:
    return [np.asarray(leaf) for leaf in multihost_utils.broadcast_one_to_all(jax.tree.leaves(tree))]


class WriterCheckpoints:
    """Training checkpoints of a computation every process runs alike (the flow): the writer saves and
    restores them, and sends what it restored to the others, so all resume from the same step."""

    def __init__(self, saves: TrainingCheckpoints):
        self.saves, self.directory = saves, saves.directory

    def save(self, step: int, state: PyTree) -> None:
        if is_writer():
            self.saves.save(step, state)

    def restore_latest(self, target: PyTree) -> tuple[int, PyTree] | None:
        restored = writer_does(lambda: self.saves.restore_latest(target))
        step = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if restored is None else restored[0])))
        if step < 0:
            return None
        if is_writer():
            _leaves_from_writer(restored[1])
            return restored
        return step, jax.tree.unflatten(jax.tree.structure(target), _leaves_from_writer(target))

    def __enter__(self) -> "WriterCheckpoints":
        return self

    def __exit__(self, *exception: object) -> None:
        if is_writer():
            self.saves.__exit__(*exception)


class ShareCheckpoints:
    """Training checkpoints of a stacked zoo state, each process saving and reading only its own models
    (the rows of the padded model axis its devices compute); a resume gathers the shares of every process."""

    def __init__(self, saves: TrainingCheckpoints, num_models: int):
        self.saves, self.directory, self.num_models = saves, saves.directory, num_models
        self.rows = process_rows(num_models)

    def _share(self, state: PyTree) -> PyTree:
        padded = pad_models(state, int(self.rows.max()) + 1) if self.rows.max() >= self.num_models else state
        return jax.tree.map(lambda leaf: np.asarray(leaf)[self.rows], padded)

    def save(self, step: int, state: PyTree) -> None:
        self.saves.save(step, self._share(state))

    def restore_latest(self, target: PyTree) -> tuple[int, PyTree] | None:
        """The newest step every process can restore (None if one has none: all start over), gathered."""
        rows, failure = len(self.rows), None
        share_target = jax.tree.map(lambda leaf: np.zeros((rows, *leaf.shape[1:]), leaf.dtype), target)
        try:
            restored = self.saves.restore_latest(share_target)
        except CheckpointError as error:
            restored, failure = None, error
        code = -2 if failure is not None else -1 if restored is None else restored[0]
        steps = np.asarray(multihost_utils.process_allgather(np.int64(code)))
        if failure is not None:
            raise failure
        if np.any(steps == -2):
            raise CheckpointError(f"another process cannot restore its share of {self.directory}; see its error")
        if np.any(steps < 0):
            return None
        step = int(steps.min())
        share = restored[1] if restored[0] == step else self.saves.restore(step, share_target)
        every_row = np.asarray(multihost_utils.process_allgather(self.rows)).reshape(-1)
        gathered = multihost_utils.process_allgather(share)

        def whole(leaf: np.ndarray) -> np.ndarray:
            leaf = np.asarray(leaf).reshape(-1, *np.shape(leaf)[2:])
            placed = np.empty((every_row.max() + 1, *leaf.shape[1:]), leaf.dtype)
            placed[every_row] = leaf
            return placed[: self.num_models]

        return step, jax.tree.map(whole, gathered)

    def __enter__(self) -> "ShareCheckpoints":
        return self

    def __exit__(self, *exception: object) -> None:
        self.saves.__exit__(*exception)
