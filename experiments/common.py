"""Shared plumbing of the experiment scripts: machine description and result files."""

import datetime
import json
import os
import pathlib
import platform
import sys

import jax

RESULTS = pathlib.Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(device) for device in jax.devices()],
    }


def provenance(wall_seconds: float) -> dict:
    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "wall_seconds": round(wall_seconds, 1),
    }


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
