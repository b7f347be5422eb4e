"""`python -m dwf_jax.main` ends every bad command line with one line on stderr, a non-zero status and no traceback.

Each case is a subprocess (about 3 s of imports); the module fixture starts them
in the background, one per CPU at a time, and each test waits for its own. None
of them gets as far as loading data: the workdir is never created.
"""

import concurrent.futures
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).parents[1]
TIMEOUT = 120
# absl's log lines ("I1130 17:02:46.734598 140090148567936 main.py:165] ...") and its note before flag parsing.
LOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] |WARNING: Logging before flag parsing")

MISSING_KEYS = """
from dwf_jax.config import base_config

def get_config():
    config = base_config()
    del config["flow"]
    del config.zoo["epochs"]
    del config.model["features"]
    return config
"""
RAISES = """
from dwf_jax.models import model_config

def get_config():
    return model_config("perceptron")
"""
DIVIDES = "def get_config():\n    scale = 0\n    return 1 / scale\n"
KEY_ERROR = "def get_config():\n    epochs = {'epochs': 3}\n    return epochs['epochz']\n"
MULTI_LINE = "def get_config():\n    raise RuntimeError('first line\\nsecond line')\n"
IRIS = "--config=configs/iris_mlp.py"

# id: (config file text or None, arguments ({config} is that file, {tmp} its folder), what the line names)
CASES = {
    "no config": (None, [], ["no --config given"]),
    "missing file": (None, ["--config={tmp}/absent.py"], ["config file", "absent.py does not exist"]),
    "directory": (None, ["--config={tmp}"], ["is a directory, not a config file"]),
    "syntax error": ("x = 1\ndef get_config(:\n    pass\n", ["--config={config}"], ["syntax error", "py, line 2"]),
    "no get_config": ("CONFIG = {}\n", ["--config={config}"], ["defines no get_config() function"]),
    "get_config returns None": ("def get_config():\n    pass\n", ["--config={config}"], ["returned None"]),
    "get_config returns a dict": ("def get_config():\n    return {}\n", ["--config={config}"], ["returned a dict"]),
    "get_config raises": (RAISES, ["--config={config}"], ["py, line 5", "unknown model 'perceptron'"]),
    "missing keys": (MISSING_KEYS, ["--config={config}"], ["missing keys ['flow', 'model.features', 'zoo.epochs']"]),
    # Any exception the config file raises is one line naming the file, the line and the exception.
    "get_config divides by zero": (DIVIDES, ["--config={config}"], ["py, line 3: ZeroDivisionError: division by zero"]),
    "import error in the file": ("import no_such_module\n", ["--config={config}"], ["py, line 1: ModuleNotFoundError"]),
    "KeyError in the file": (KEY_ERROR, ["--config={config}"], ["py, line 3: KeyError: 'epochz'"]),
    "multi-line message": (MULTI_LINE, ["--config={config}"], ["py, line 2: RuntimeError: first line; second line"]),
    "multi-line ValueError": (
        MULTI_LINE.replace("RuntimeError", "ValueError"),
        ["--config={config}"],
        ["first line; second"],
    ),
    "not an integer": (None, [IRIS, "--config.zoo.num_models=abc"], ["--config.zoo.num_models=abc", "int()"]),
    "unknown flag": (None, [IRIS, "--bogus=1"], ["unknown flag --bogus"]),
    "unknown config key": (None, [IRIS, "--config.zoo.bogus=1"], ["unknown config key 'bogus'"]),
    # A CNN's model section has none of the MLP's fields; the key check leaves it to the config's own checks.
    "smallcnn, bad value": (None, ["--config=configs/smallcnn.py", "--config.zoo.num_models=1"], ["zoo.num_models=1"]),
}
# With --traceback the same problems show their stack: one found while parsing flags, one after.
TRACEBACK_CASES = ["syntax error", "missing keys"]


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dwf_jax.main", *args]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Every case started in the background, as many at once as there are CPUs: {(case, traceback): (run, workdir)}."""
    runs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for name, traceback in [(name, False) for name in CASES] + [(name, True) for name in TRACEBACK_CASES]:
            text, args, _ = CASES[name]
            tmp = tmp_path_factory.mktemp("cli")
            config = tmp / "config_file.py"
            if text is not None:
                config.write_text(text)
            workdir = tmp / "work"
            extra = ["--traceback"] if traceback else []
            argv = command(*(arg.format(config=config, tmp=tmp) for arg in args), f"--workdir={workdir}", *extra)
            run = pool.submit(subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
            runs[name, traceback] = run, workdir
        yield runs


@pytest.mark.parametrize("case", CASES)
def test_bad_command_line_is_one_line(launched, case):
    run, workdir = launched[case, False]
    returncode, stderr = run.result().returncode, run.result().stderr
    lines = problem_lines(stderr)
    assert returncode != 0 and "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("dwf_jax: error: "), stderr
    for words in CASES[case][2]:
        assert words in lines[0]
    assert not workdir.exists()


@pytest.mark.parametrize("case", TRACEBACK_CASES)
def test_traceback_flag_shows_the_stack(launched, case):
    run, _ = launched[case, True]
    returncode, stderr = run.result().returncode, run.result().stderr
    assert returncode != 0 and "Traceback (most recent call last)" in stderr, stderr


# Starts argv with SIGINT as at a terminal, also where the tests run in the background (whose children ignore
# SIGINT): a Python that resets it, then execs; preexec_fn would fork the test process, which JAX's threads forbid.
WITH_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
]


def test_ctrl_c_is_one_line_and_status_130(tmp_path):
    workdir = tmp_path / "work"
    overrides = ["--config.zoo.num_models=2", "--config.zoo.epochs=1000", "--config.flow.iterations=100000"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        argv = command(IRIS, f"--workdir={workdir}", "--progress=false", *overrides)
        process = subprocess.Popen([*WITH_DEFAULT_SIGINT, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while not any((workdir / folder).exists() for folder in ("zoo_chunks", "flow_checkpoints")):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    lines = problem_lines(text)
    assert returncode == 130 and "Traceback" not in text, text
    assert len(lines) == 1 and lines[0].startswith("dwf_jax: ") and "interrupted" in lines[0].lower(), text


def test_the_command_line_starts_without_torch_tensorboard_or_scipy_stats():
    """Each takes ~0.5-1 s to import (torch comes with tensorboardX where installed): a bad flag is answered
    without them; they are imported where a run first needs them."""
    heavy = ("torch", "tensorboardX", "scipy.stats")
    probe = f"import sys, dwf_jax.cli; print(sorted(set({heavy!r}) & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]", output.stdout
