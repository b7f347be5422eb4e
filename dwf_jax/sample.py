"""`python -m dwf_jax.sample --workdir=W --num=1000 --seed=S --out=nets.npz`: new networks from a finished run.

The command line of `dwf_jax.Generator`: it draws `--num` networks, re-estimates their BatchNorm statistics
(`--recalibrate`, as the run does; nothing to do without BatchNorm) and writes them as one .npz of stacked
variables named by key path ('params/Dense_0/kernel', leading model axis). `--evaluate` prints their test
accuracy. The workdir is only read. jax and orbax are imported in `main`, after Ctrl-C is routed
(`dwf_jax.main`: the threads they start inherit the signal mask).
"""

import pathlib
import sys

from absl import app, flags, logging

from dwf_jax.main import route_ctrl_c_to_main_thread

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The workdir of a finished run (its flow stage).")
flags.DEFINE_integer("num", None, "How many networks to draw.", lower_bound=1)
flags.DEFINE_integer(
    "seed",
    None,
    "Seed of the source noise (jax.random.key(seed)). Without it, the run's own sample stream: "
    "with --num=sample.num_samples that is the run's generated ensemble, bit for bit.",
)
flags.DEFINE_string("out", None, "The .npz file to write (replaced if it exists).")
flags.DEFINE_string("data_dir", None, "Where the run's data lies now, if it moved (the data must be the same).")
flags.DEFINE_bool("recalibrate", True, "Re-estimate BatchNorm statistics as the run does (config.bn).")
flags.DEFINE_bool("evaluate", False, "Print the mean ± std test accuracy of the networks written.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")
flags.mark_flags_as_required(["workdir", "num", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dwf_jax.commands import INPUT_ERRORS, INTERRUPTED, use_deterministic_gpu_ops

    use_deterministic_gpu_ops()  # the run's bits on a GPU too
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    out = pathlib.Path(FLAGS.out)
    try:
        write_sample(out)
    except INPUT_ERRORS as error:
        if FLAGS.traceback:
            raise
        sys.exit(f"dwf_jax: error: {error}")
    except KeyboardInterrupt:
        if FLAGS.traceback:
            raise
        print(f"dwf_jax: interrupted; {out} was not written", file=sys.stderr)
        sys.exit(INTERRUPTED)


def write_sample(out: pathlib.Path) -> None:
    """Draw, recalibrate, write (whole or not at all: `durable.atomic_path`), and print what was written."""
    import jax
    import numpy as np

    from dwf_jax import durable
    from dwf_jax.evaluate import summary
    from dwf_jax.generator import Generator, named_arrays

    generator = Generator.load(FLAGS.workdir, FLAGS.data_dir)
    key = generator.pipeline_key() if FLAGS.seed is None else jax.random.key(FLAGS.seed)
    nets = generator.sample(key, FLAGS.num, progress=FLAGS.progress)
    if FLAGS.recalibrate:
        nets = generator.recalibrate(nets)
    with durable.atomic_path(out) as temporary, open(temporary, "wb") as file:
        np.savez(file, **named_arrays(nets))
    print(f"wrote {FLAGS.num} networks to {out}")
    if FLAGS.evaluate:
        score = summary(generator.evaluate(nets))
        what, digits = ("Spearman's rho", 3) if generator.dataset.regression else ("test accuracy (%)", 2)
        statistics = " after BatchNorm recalibration" if FLAGS.recalibrate and "batch_stats" in nets else ""
        print(f"{what}{statistics}: {score['mean']:.{digits}f} ± {score['std']:.{digits}f}")


if __name__ == "__main__":
    route_ctrl_c_to_main_thread()
    app.run(main)
