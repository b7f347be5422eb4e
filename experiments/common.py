"""Shared plumbing of the experiment scripts: machine description and result files."""

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from dwf_jax.data import Dataset

RESULTS = pathlib.Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(device) for device in jax.devices()],
    }


def code_version() -> str:
    """The commit the run started from, marked dirty when the work tree had changes."""
    root = pathlib.Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    return f"{commit or 'unknown'}{' (dirty)' if dirty else ''}"


def provenance(wall_seconds: float, code: str) -> dict:
    return {
        "command": "python " + " ".join(sys.argv),
        "code": code,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "wall_seconds": round(wall_seconds, 1),
    }


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)


def log_stages() -> None:
    """INFO logging for the pipeline's stage lines, without orbax's per-save chatter."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)


def provenance_lines(provenance: dict) -> list[str]:
    """The command, date, code version and machine lines every result file starts with."""
    machine = provenance["machine"]
    return [
        f"Command: `{provenance['command']}`  ",
        f"Date: {provenance['date']}; code: {provenance['code']}  ",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, jax {machine['jax']} on {machine['devices']}  ",
    ]


def header_lines(title: str, provenance: dict) -> list[str]:
    """A result file's title, provenance and wall time."""
    return [
        f"# {title}",
        "",
        *provenance_lines(provenance),
        f"Wall time of this invocation: {provenance['wall_seconds']} s  ",
    ]


def run_and_write(name: str, compute_rows: Callable[[], Any], markdown: Callable[[Any, dict], str]) -> None:
    """Compute an experiment's rows and write them with their provenance; the code version is read before the run."""
    log_stages()
    code = code_version()
    start = time.perf_counter()
    rows = compute_rows()
    run = provenance(time.perf_counter() - start, code)
    write_results(name, {"provenance": run, "rows": rows}, markdown(rows, run))


def run_summary(report: dict, workdir: pathlib.Path, seconds: float | None) -> dict:
    """What the tables read of one pipeline run's report (the workdir's report.json keeps the rest)."""
    return {
        "workdir": str(workdir),
        "dataset": report["dataset"],
        "flow_space": report["flow"]["weight_space"],
        "flow_num_params": report["flow"]["num_params"],
        "flow_final_loss": report["flow"]["final_loss_mean_last_100"],
        "original_accuracy": report["original"]["accuracy"],
        "generated_accuracy": report["generated"]["accuracy"],
        "novelty": report["generated"]["novelty"],
        "timings": report["timings"],
        "wall_seconds_this_invocation": seconds,
    }


def cell(stats: dict, digits: int = 3) -> str:
    """A summary (evaluate.summary) as `mean ± std` to `digits` decimals."""
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def mean_std(stats: dict) -> str:
    """An accuracy summary (evaluate.summary) as the tables print it."""
    return cell(stats, 2)


def random_subset(dataset: Dataset, train: int | None, test: int | None) -> Dataset:
    """A fixed random `train` / `test` examples of each split (numpy seed 0 each, in split order); None or 0: all.

    Random, not the first K: the CIFAR-10 copy is stored class by class. A new fingerprint, so a workdir of its own.
    """

    def pick(count: int | None, size: int) -> np.ndarray:
        if not count or count >= size:
            return np.arange(size)
        return np.sort(np.random.default_rng(0).choice(size, count, replace=False))

    train_rows, test_rows = pick(train, len(dataset.x_train)), pick(test, len(dataset.x_test))
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[train_rows],
        y_train=dataset.y_train[train_rows],
        x_test=dataset.x_test[test_rows],
        y_test=dataset.y_test[test_rows],
    )


def strip(tree: Any) -> Any:
    """A report section less its per-model lists (each workdir's report.json keeps them)."""
    if isinstance(tree, dict):
        return {key: strip(value) for key, value in tree.items() if key != "per_model"}
    return tree
