"""The command line of `python -m dwf_jax.main --config=configs/iris_mlp.py`: flags, config, one-line errors.

Kept short on purpose (as in flax/examples): the work lives in
`dwf_jax.pipeline`, which can be imported and tested.
"""

import os
import pathlib
import re
import sys
import traceback
import types

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from dwf_jax import pipeline, processes, report
from dwf_jax.commands import INPUT_ERRORS, INTERRUPTED, use_deterministic_gpu_ops
from dwf_jax.durable import full_disk_cause
from dwf_jax.workdir import REPORT_FILE

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where stages and report.json go (default: workdirs/<config name>).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, to run over several processes (jax.distributed)."
)
flags.DEFINE_integer("num_processes", 1, "How many processes the run has (with --coordinator_address).")
flags.DEFINE_integer("process_id", 0, "This process's number, 0..num_processes-1 (with --coordinator_address).")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/iris_mlp.py.", lock_config=True)
flags.mark_flags_as_required(["config"])


class ConfigFileError(Exception):
    """The config file given by --config cannot be used; the message names the file and the problem."""


def _traceback_requested(argv: list[str]) -> bool:
    """Whether argv turns --traceback on (read by hand: FLAGS are not parsed when parsing fails)."""
    requested = False
    for arg in argv[1:]:
        name, _, value = arg.lstrip("-").partition("=")
        if name == "traceback":
            requested = value.lower() not in ("false", "f", "0")
        elif name == "notraceback":
            requested = False
    return requested


def _config_argument(argv: list[str]) -> str | None:
    """The config file named on the command line (read by hand: FLAGS are not parsed when parsing fails)."""
    for index, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1].split(":", 1)[0]
    return None


def _raised_in_config_file(error: BaseException, path: str | None) -> str | None:
    """One line for an exception the config file raised (in get_config or while imported), naming its line.

    config_flags re-raises some (TypeError, ValueError) inside its own errors: the chain is searched.
    """
    if not path:
        return None
    target, seen = os.path.realpath(path), set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(error.__traceback__)
            if os.path.realpath(frame.filename) == target
        ]
        if lines:
            message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
            return f"config file {path}, line {lines[-1]}: {type(error).__name__}: {message or '(no message)'}"
        error = error.__cause__ or error.__context__
    return None


def _flag_problem(error: flags.Error) -> str:
    """One line for an absl flag error; a validator's cause rather than absl's wrapping."""
    text = str(error)
    if isinstance(error, flags.IllegalFlagValueError) and FLAGS["config"].value is None:  # the required-flag check
        if not FLAGS["config"].present:
            return "no --config given; pass a config file, e.g. --config=configs/iris_mlp.py"
        return f"get_config() in {FLAGS['config'].config_filename} returned None (is its return statement missing?)"
    if isinstance(error, flags.UnrecognizedFlagError):
        suggestion = re.search(r"Did you mean: (.+) \?", text)
        hint = f" (did you mean --{suggestion.group(1)}?)" if suggestion else ""
        return f"unknown flag --{error.flagname}{hint}; --helpshort lists the flags"
    return " ".join(text.removeprefix("flag ").split())


def _unknown_key(error: AttributeError | KeyError, argv: list[str]) -> str:
    """An unknown `--config.KEY` named by the key, or a config file without get_config."""
    if isinstance(error, AttributeError) and error.name == "get_config" and isinstance(error.obj, types.ModuleType):
        return f"config file {error.obj.__file__} defines no get_config() function"
    text = str(error).replace("\\", "")
    name = re.search(r"'([^']+)'", text)
    name = name.group(1) if name else text
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = f' (did you mean "{suggestion.group(1)}"?)' if suggestion else ""
    culprits = [arg for arg in argv if arg.startswith("--config.") and f".{name}" in arg.split("=")[0]]
    return (
        f"unknown config key {name!r} in {' '.join(culprits or argv[1:])}{hint}; the config file lists the valid keys."
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with every flag or config file problem reported as one line (the stack with --traceback)."""
    try:
        return FLAGS(argv)
    except Exception as error:
        if _traceback_requested(argv):
            raise
        problem = _raised_in_config_file(error, _config_argument(argv))
        if problem is not None:
            pass
        elif isinstance(error, flags.Error):
            problem = _flag_problem(error)
        elif isinstance(error, SyntaxError):  # config_flags imports the file while parsing --config
            problem = f"syntax error in config file {error.filename}, line {error.lineno}: {error.msg}"
        elif isinstance(error, AttributeError | KeyError):
            problem = _unknown_key(error, argv)
        else:
            raise
        sys.exit(f"dwf_jax: error: {problem}")


def loaded_config() -> ml_collections.ConfigDict:
    """FLAGS.config, or one line on why the file gave none (its keys and values are `validate_config`'s job)."""
    filename = FLAGS["config"].config_filename
    path = pathlib.Path(filename.split(":", 1)[0])
    config = FLAGS.config
    try:
        getattr(config, "keys", None)  # config_flags defers a failed read: its stand-in raises OSError when used
    except OSError as error:
        if not path.name:
            raise ConfigFileError("--config is empty; pass a config file, e.g. --config=configs/iris_mlp.py") from error
        if not path.exists():
            raise ConfigFileError(f"config file {path} does not exist") from error
        if path.is_dir():
            raise ConfigFileError(f"--config={path} is a directory, not a config file") from error
        cause = error.__cause__ or error
        raise ConfigFileError(f"cannot read config file {path}: {getattr(cause, 'strerror', None) or cause}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(
            f"get_config() in {filename} returned a {type(config).__name__}, not an ml_collections.ConfigDict "
            "(configs start from dwf_jax.config.base_config())"
        )
    return config


def default_workdir(config_filename: str) -> pathlib.Path:
    """workdirs/<config name>; a config file whose name is no folder name ('..py') needs --workdir."""
    name = pathlib.Path(config_filename.split(":", 1)[0]).stem
    if name in ("", ".", "..") or name.startswith("."):
        raise ConfigFileError(
            f"config file {config_filename} gives no folder name for the default workdir; pass --workdir"
        )
    return pathlib.Path("workdirs") / name


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    use_deterministic_gpu_ops()
    try:
        workdir = pathlib.Path(FLAGS.workdir or default_workdir(FLAGS["config"].config_filename))
        config = loaded_config()
        if FLAGS.coordinator_address:
            processes.connect(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
        logging.info("writing to %s", workdir.absolute())
        result = pipeline.run(config, workdir, progress=FLAGS.progress)
    except (ConfigFileError, *INPUT_ERRORS) as error:
        if FLAGS.traceback:
            raise
        sys.exit(f"dwf_jax: error: {error}")
    except Exception as error:  # a full disk met inside a library (orbax, matplotlib) that wraps the OSError
        if FLAGS.traceback or full_disk_cause(error) is None:
            raise
        sys.exit(
            f"dwf_jax: error: disk full under {workdir} ({full_disk_cause(error).strerror}). Free some space "
            "and rerun the same command: finished stages are kept"
        )
    except KeyboardInterrupt as error:
        if FLAGS.traceback:
            raise
        print(
            f"dwf_jax: {error}"
            if str(error)
            else f"dwf_jax: interrupted; run the same command again to resume in {workdir} "
            "(finished stages and training checkpoints are kept)",
            file=sys.stderr,
        )
        sys.exit(INTERRUPTED)
    if processes.is_writer():
        print(report.format_summary(result))
        print(f"report: {workdir / REPORT_FILE}")


def run() -> None:
    """Parse the command line and run the pipeline (`python -m dwf_jax.main`)."""
    app.run(main, flags_parser=parse_flags)
