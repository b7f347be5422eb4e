"""Command-line entry point: `python -m dwf_jax.main --config=configs/iris_mlp.py`.

Kept short on purpose (as in flax/examples): the work lives in
`dwf_jax.pipeline`, which can be imported and tested.
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from dwf_jax import pipeline, report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where stages and report.json go (default: workdirs/<config name>).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/iris_mlp.py.", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    config_name = pathlib.Path(FLAGS["config"].config_filename).stem
    workdir = pathlib.Path(FLAGS.workdir or f"workdirs/{config_name}")
    logging.info("writing to %s", workdir.absolute())
    result = pipeline.run(FLAGS.config, workdir, progress=FLAGS.progress)
    print(report.format_summary(result))
    print(f"report: {workdir / report.REPORT_FILE}")


if __name__ == "__main__":
    app.run(main)
