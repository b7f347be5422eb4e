"""Test-wide settings (float32 matrix products at full precision on every backend) and shared fixtures.

GPUs multiply float32 in TF32 by default (about 1e-3 relative error), which is
right for training but hides what the tests check: functional equivalence after
permutation to 1e-5, streamed and in-memory results equal to 1e-5. And GPU
kernels are made deterministic, as the command line makes them: tests compare
runs bitwise.
"""

import os
import shutil

# pytest-xdist runs the tests in two processes (pyproject's addopts): on a GPU neither may take the 75 % of its memory
# JAX takes up front by default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402
from background import Background
from tiny_runs import tiny_config

from dwf_jax import pipeline
from dwf_jax.cli import use_deterministic_gpu_ops

jax.config.update("jax_default_matmul_precision", "highest")
use_deterministic_gpu_ops()


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """One finished tiny run for the whole session: read it only, or damage a `workdir` copy."""
    workdir = tmp_path_factory.mktemp("finished") / "work"
    pipeline.run(tiny_config(), workdir, progress=False)
    return workdir


@pytest.fixture
def workdir(finished, tmp_path):
    """A private copy of a finished run, to damage at will."""
    copy = tmp_path / "work"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """Subprocess-only work of the selected tests (tests/background.py), started now beside the other tests."""
    # Under pytest-xdist every worker collects every test: the workers are the parallelism, and a job runs where
    # (and when) its test asks for it.
    selected = set() if os.environ.get("PYTEST_XDIST_WORKER") else request.session.items
    jobs = Background(tmp_path_factory, {(item.path.name, item.originalname) for item in selected})
    yield jobs
    jobs.close()
