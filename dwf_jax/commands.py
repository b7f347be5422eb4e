"""What every command line of dwf_jax shares, without defining flags (each command's module defines its own).

The errors that describe bad input, printed as one line without a traceback, and the
XLA setting that makes a GPU compute the same bits as every earlier run.
"""

import os

from dwf_jax import processes
from dwf_jax.checkpoints import CheckpointError, NotEnoughSpace
from dwf_jax.session import WorkdirBusy
from dwf_jax.zoo_store import NonFiniteWeights

# Errors that describe bad input; they are printed as one line, without a traceback.
INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    CheckpointError,
    NotEnoughSpace,
    NonFiniteWeights,
    FloatingPointError,
    WorkdirBusy,
    processes.WriterFailed,
)
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def use_deterministic_gpu_ops() -> None:
    """Same config and seed, same numbers on a GPU too: XLA otherwise picks kernels (atomics, autotuned
    convolutions) whose results vary from run to run. Takes effect before the first computation."""
    flags_now = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags_now:
        os.environ["XLA_FLAGS"] = f"{flags_now} --xla_gpu_deterministic_ops=true".strip()
