"""Command-line entry point: `python -m dwf_jax.main --config=configs/iris_mlp.py`.

Kept short on purpose (as in flax/examples): the work lives in
`dwf_jax.pipeline`, which can be imported and tested.
"""

import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dwf_jax import pipeline, report
from dwf_jax.checkpoints import CheckpointError, NotEnoughSpace
from dwf_jax.workdir import REPORT_FILE, WorkdirBusy
from dwf_jax.zoo_store import NonFiniteWeights

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where stages and report.json go (default: workdirs/<config name>).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/iris_mlp.py.", lock_config=True)
flags.mark_flags_as_required(["config"])

# Errors that describe bad input; they are printed as one line, without a traceback.
INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    CheckpointError,
    NotEnoughSpace,
    NonFiniteWeights,
    WorkdirBusy,
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with an unknown `--config.KEY` reported by name instead of as an AttributeError."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as error:
        text = str(error).replace("\\", "")
        name = re.search(r"'([^']+)'", text)
        name = name.group(1) if name else text
        suggestion = re.search(r'Did you mean "([^"]+)"', text)
        hint = f' (did you mean "{suggestion.group(1)}"?)' if suggestion else ""
        culprits = [arg for arg in argv if arg.startswith("--config.") and f".{name}" in arg.split("=")[0]]
        sys.exit(
            f"dwf_jax: unknown config key {name!r} in {' '.join(culprits or argv[1:])}{hint}; "
            "the config file lists the valid keys."
        )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    config_name = pathlib.Path(FLAGS["config"].config_filename).stem
    workdir = pathlib.Path(FLAGS.workdir or f"workdirs/{config_name}")
    logging.info("writing to %s", workdir.absolute())
    try:
        result = pipeline.run(FLAGS.config, workdir, progress=FLAGS.progress)
    except INPUT_ERRORS as error:
        if FLAGS.traceback:
            raise
        sys.exit(f"dwf_jax: error: {error}")
    print(report.format_summary(result))
    print(f"report: {workdir / REPORT_FILE}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
