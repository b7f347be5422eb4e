"""Training curves (losses, learning rates) as TensorBoard event files, for users to see how training went.

tensorboardX writes them without TensorFlow; `read_scalars` reads them back without TensorBoard, for the tests and
for anyone who wants the numbers. Each training writes into its own folder under `<workdir>/tensorboard/` (one
TensorBoard run: `zoo/models_0000-0099` per chunk of the zoo, `flow`), on the writer process only. The curves only
watch: no stage reads them, so they never change a result.
"""

import pathlib
import secrets
import struct
from collections.abc import Iterator, Mapping

import numpy as np
import optax
from absl import logging

from dwf_jax import processes

EVENT_FILES = "events.out.tfevents.*"
Scalars = dict[str, list[tuple[int, float]]]


class Curves:
    """Scalar curves of one training in `folder` (None: nothing written), one value per tag and step over every
    run of that training.

    `start` is the step this run's training starts from: 0 (from scratch) deletes the folder's earlier curves, which
    belong to a training whose checkpoints are gone (it diverged, or had other settings). A resumed run skips the
    steps an earlier run logged after its last checkpoint: a resumed training repeats them exactly. Only the writer
    process writes (`processes.is_writer`); on the others a `Curves` does nothing.
    """

    def __init__(self, folder: pathlib.Path | None, start: int) -> None:
        self.folder = folder if processes.is_writer() else None
        self._writer = None  # a tensorboardX.SummaryWriter once the first scalar comes
        self._logged = 0
        if self.folder is None:
            return
        if start == 0:
            for path in self.folder.glob(EVENT_FILES):
                path.unlink()
        else:
            self._logged = max((step for points in read_scalars(self.folder).values() for step, _ in points), default=0)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Each tag's value at `step`, unless an earlier run logged that step; the file is made at the first one."""
        if self.folder is None or step <= self._logged:
            return
        if self._writer is None:
            # tensorboardX names a file by the second and the host: a random suffix keeps a writer started in the
            # same second (a quick resume) from overwriting the file of the one before.
            from tensorboardX import SummaryWriter  # here: importing tensorboardX imports torch where installed

            self._writer = SummaryWriter(str(self.folder), filename_suffix=f".{secrets.token_hex(4)}")
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Write out what is queued (tensorboardX writes from a thread, otherwise every two minutes)."""
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "Curves":
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


class ZooCurves:
    """`zoo.train_models`'s `on_epoch` for one chunk of the zoo: one point per epoch (1-based) of each tag.

    `zoo/loss_mean` and `zoo/loss_max` are over the chunk's models of each model's mean loss in the epoch,
    `zoo/learning_rate` the rate of the epoch's last step. Chunks train one after another, so each has its own
    folder (a TensorBoard run) rather than tags that would take several values per epoch. The curves open at the
    first epoch this run trains, which is where its training resumed.
    """

    def __init__(self, folder: pathlib.Path, learning_rate: optax.Schedule, steps_per_epoch: int) -> None:
        self.folder, self.learning_rate, self.steps_per_epoch = folder, learning_rate, steps_per_epoch
        self._curves: Curves | None = None

    def __call__(self, epoch: int, losses: np.ndarray) -> None:
        if self._curves is None:
            self._curves = Curves(self.folder, start=epoch - 1)
        rate = self.learning_rate(epoch * self.steps_per_epoch - 1)
        scalars = {"zoo/loss_mean": np.mean(losses), "zoo/loss_max": np.max(losses), "zoo/learning_rate": rate}
        self._curves.log(epoch, {tag: float(value) for tag, value in scalars.items()})

    def __enter__(self) -> "ZooCurves":
        return self

    def __exit__(self, *exception: object) -> None:
        if self._curves is not None:
            self._curves.close()


def flow_scalars(losses: np.ndarray, steps_done: int, learning_rate: optax.Schedule) -> dict[str, float]:
    """The flow's point after a dispatched chunk of steps: `flow/loss`, the mean of the chunk's losses, and
    `flow/learning_rate`, the rate of its last step (step `steps_done`, counted from 1; optax counts from 0)."""
    return {"flow/loss": float(np.mean(losses)), "flow/learning_rate": float(learning_rate(steps_done - 1))}


def read_scalars(folder: pathlib.Path) -> Scalars:
    """Every scalar of the event files in `folder`, per tag as (step, value) in the order written (files by name,
    which starts with the time they were begun); nothing for a missing folder."""
    from tensorboardX.proto import event_pb2  # here, as SummaryWriter

    scalars: Scalars = {}
    for path in sorted(folder.glob(EVENT_FILES)):
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _records(path: pathlib.Path) -> Iterator[bytes]:
    """The records of a TFRecord file: uint64 length, its masked CRC-32C, the bytes, their masked CRC-32C.

    A record cut short or failing a checksum ends the file, with a warning: a run killed while writing leaves
    that, and curves are never worth stopping a run for.
    """
    from tensorboardX.record_writer import masked_crc32c  # here, as SummaryWriter

    raw, offset = path.read_bytes(), 0
    while offset < len(raw):
        header = raw[offset : offset + 8]
        end = offset + 16 + (struct.unpack("<Q", header)[0] if len(header) == 8 else len(raw))
        data = raw[offset + 12 : end - 4]
        whole = end <= len(raw) and _u32(raw, offset + 8) == masked_crc32c(header)
        if not (whole and _u32(raw, end - 4) == masked_crc32c(data)):
            logging.warning("training curves: %s is damaged or cut short at byte %d; the rest is skipped", path, offset)
            return
        yield data
        offset = end


def _u32(raw: bytes, offset: int) -> int:
    return struct.unpack_from("<I", raw, offset)[0]
