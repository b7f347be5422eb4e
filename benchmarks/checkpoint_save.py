"""What checksummed saves cost: orbax alone vs `checkpoints.save_tree` (orbax + manifest), `verify`, and
how long a training checkpoint blocks training (`TrainingCheckpoints.save`; orbax then writes in the background).

The tree is the flow's training state at the MNIST paper settings (27.5M parameters,
and Adam's two moments: 82M float32, 330 MB), saved --repeats times each way into
--dir; the best time of each is printed, with the ratio to orbax alone.

  nice -n 19 .venv/bin/python benchmarks/checkpoint_save.py
"""

import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from dwf_jax import checkpoints
from dwf_jax.settings import differences

FLAGS = flags.FLAGS
flags.DEFINE_integer("parameters", 27_471_690, "Flow parameters (the state holds three times as many floats).")
flags.DEFINE_integer("repeats", 3, "Saves per method; the best is reported.")
flags.DEFINE_string("dir", None, "Where to write (default: a temporary folder).")


def best_seconds(action: Callable[[int], None], repeats: int, between: Callable[[], None] = lambda: None) -> float:
    """Best wall time of `action` over `repeats` calls; `between` runs untimed after each."""
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        action(repeat)
        times.append(time.perf_counter() - start)
        between()
    return min(times)


def orbax_alone(path: pathlib.Path, tree: dict) -> None:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.absolute(), tree)
    checkpointer.wait_until_finished()


def main(_) -> None:
    rng = np.random.default_rng(0)
    tree = {name: rng.standard_normal(FLAGS.parameters, dtype=np.float32) for name in ("params", "mu", "nu")}
    megabytes = sum(leaf.nbytes for leaf in tree.values()) / 2**20
    root = pathlib.Path(FLAGS.dir or tempfile.mkdtemp())
    try:
        rows = {
            "orbax StandardCheckpointer": best_seconds(lambda i: orbax_alone(root / f"orbax_{i}", tree), FLAGS.repeats),
            "checkpoints.save_tree": best_seconds(
                lambda i: checkpoints.save_tree(root / f"verified_{i}", tree), FLAGS.repeats
            ),
            "checkpoints.verify": best_seconds(lambda i: checkpoints.verify(root / f"verified_{i}"), FLAGS.repeats),
        }
        saves = checkpoints.TrainingCheckpoints(root / "training", settings={}, differences=differences)
        rows["TrainingCheckpoints.save"] = best_seconds(lambda i: saves.save(i, tree), FLAGS.repeats, saves.wait)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{megabytes:.0f} MB state, best of {FLAGS.repeats} (TrainingCheckpoints.save: the time training waits)")
    for name, seconds in rows.items():
        print(f"  {name:28s} {seconds:6.2f} s  ({seconds / rows['orbax StandardCheckpointer']:.2f}x orbax alone)")


if __name__ == "__main__":
    app.run(main)
