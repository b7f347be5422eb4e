"""Zoo PCAs side by side with scikit-learn's IncrementalPCA, and a zoo larger than the RAM budget.

Default mode: one synthetic low-rank + noise zoo (float32, in memory) and, for each
--components, every method on the same data: wall time, speed-up over scikit-learn and
relative reconstruction error ||X - X_hat|| / ||X - mean||. Every method runs once
untimed first (JAX compiles then), then once timed, including the transfer of the numpy zoo.

--scale_test: writes a synthetic zoo of --scale_models x --scale_dim float32 random
weights row by row (bounded memory) to --scale_dir, runs the streaming dual PCA from
that file with --scale_micro_batch columns per block and the components written to a
file next to it, reports wall time and peak RSS, and deletes both files.

  nice -n 19 .venv/bin/python benchmarks/pca.py
  nice -n 19 /usr/bin/time -v .venv/bin/python benchmarks/pca.py --scale_test
"""

import pathlib
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.decomposition import IncrementalPCA

from dwf_jax import pca
from dwf_jax.zoo_store import MemoryZoo, write_rows

flags.DEFINE_integer("num_models", 100, "Models N in the zoo.")
flags.DEFINE_integer("dim", 200_000, "Weights D per model.")
flags.DEFINE_integer("rank", 20, "Rank of the zoo's signal; noise fills the other directions.")
flags.DEFINE_float("noise", 0.1, "Std of the full-rank noise (the signal's directions have std 1..rank).")
flags.DEFINE_list("components", ["50", "99"], "k values to run, each a separate table row group.")
flags.DEFINE_integer("batch_size", 0, "Models per incremental step; 0 = k, the smallest scikit-learn accepts.")
flags.DEFINE_integer("micro_batch", 32_768, "Columns per block of the streaming dual PCA.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic zoo.")
flags.DEFINE_bool("scale_test", False, "Run the disk-sized streaming test instead of the table.")
flags.DEFINE_string("scale_dir", "/tmp", "Directory for the scale test's zoo and components files.")
flags.DEFINE_integer("scale_models", 100, "Models in the scale test.")
flags.DEFINE_integer("scale_dim", 11_173_962, "Weights per model in the scale test (ResNet-18).")
flags.DEFINE_integer("scale_micro_batch", 131_072, "Columns per block in the scale test.")
FLAGS = flags.FLAGS


def synthetic_zoo(num_models: int, dim: int, rank: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = (
        rng.standard_normal((num_models, rank), np.float32) * np.arange(rank, 0, -1, dtype=np.float32)
    ) @ rng.standard_normal((rank, dim), np.float32)
    return (
        signal / np.sqrt(dim, dtype=np.float32)
        + noise * rng.standard_normal((num_models, dim), np.float32)
        + rng.standard_normal(dim, np.float32)
    )


def relative_error(weights: np.ndarray, state: pca.PCAState) -> float:
    """In float64 for every method, so the metric's own rounding does not favour one of them."""
    weights, mean, components = (np.asarray(array, np.float64) for array in (weights, state.mean, state.components))
    centred = weights - mean
    return float(
        np.linalg.norm(centred - (centred @ components.T) @ components) / np.linalg.norm(weights - weights.mean(0))
    )


def timed(run: Callable[[], pca.PCAState]) -> tuple[float, pca.PCAState]:
    jax.block_until_ready(run())
    start = time.perf_counter()
    state = jax.block_until_ready(run())
    return time.perf_counter() - start, state


def table() -> None:
    weights = synthetic_zoo(FLAGS.num_models, FLAGS.dim, FLAGS.rank, FLAGS.noise, FLAGS.seed)
    num_models, dim = weights.shape
    print(
        f"zoo: N={num_models} x D={dim} float32, rank {FLAGS.rank} + noise {FLAGS.noise}; "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}"
    )
    print("| method | k | batch | wall s | speed-up vs sklearn | rel. recon. error |\n|---|---|---|---|---|---|")
    for num_components in map(int, FLAGS.components):
        batch_size = FLAGS.batch_size or num_components
        micro = FLAGS.micro_batch
        runs = {
            f"sklearn IncrementalPCA (batch {batch_size})": partial(_sklearn, weights, num_components, batch_size),
            "dual, in memory": lambda k=num_components: pca.fit_dual(jnp.asarray(weights), k),
            f"dual, streamed ({micro} columns/block)": partial(_streamed, weights, num_components, micro, False),
            f"dual, streamed fp16 ({micro} columns/block)": partial(_streamed, weights, num_components, micro, True),
            f"incremental, ours (batch {batch_size})": partial(
                pca.fit_incremental, weights, num_components, batch_size
            ),
        }
        baseline = None
        for name, run in runs.items():
            seconds, state = timed(run)
            baseline = baseline or seconds
            print(
                f"| {name} | {num_components} | {batch_size} | {seconds:.2f} | {baseline / seconds:.1f}x "
                f"| {relative_error(weights, state):.3e} |",
                flush=True,
            )


def _sklearn(weights: np.ndarray, num_components: int, batch_size: int) -> pca.PCAState:
    fitted = IncrementalPCA(n_components=num_components, batch_size=batch_size).fit(weights)
    return pca.PCAState(fitted.mean_, fitted.components_, fitted.explained_variance_)


def _streamed(weights: np.ndarray, num_components: int, micro_batch: int, fp16: bool) -> pca.PCAState:
    state, _ = pca.fit_transform_dual_streaming(
        MemoryZoo(weights).columns, *weights.shape, num_components, micro_batch, fp16=fp16
    )
    return state


def scale_test() -> None:
    num_models, dim, noise = FLAGS.scale_models, FLAGS.scale_dim, 0.05
    directory = pathlib.Path(FLAGS.scale_dir)
    zoo_path, components_path = directory / "dwf_pca_scale_zoo.f32", directory / "dwf_pca_scale_components.f32"
    needed, free = 4 * dim * (2 * num_models - 1), shutil.disk_usage(directory).free
    if free < 1.1 * needed:
        raise SystemExit(
            f"{directory} has {free / 1e9:.1f} GB free; the scale test needs {needed / 1e9:.1f} GB: pass --scale_dir"
        )

    def rows() -> Iterator[np.ndarray]:
        """Synthetic random weights, not a trained zoo: a shared init plus per-model noise, one row at a time."""
        rng = np.random.default_rng(FLAGS.seed)
        shared = 0.05 * rng.standard_normal(dim, np.float32)
        for _ in range(num_models):
            yield shared + noise * rng.standard_normal(dim, np.float32)

    try:
        start = time.perf_counter()
        zoo = write_rows(zoo_path, rows())
        written = time.perf_counter() - start
        print(
            f"wrote synthetic random zoo {num_models} x {dim} float32 ({4 * num_models * dim / 1e9:.2f} GB) "
            f"to {zoo_path} in {written:.1f} s"
        )
        start = time.perf_counter()
        state, _ = pca.fit_transform_dual_streaming(
            zoo.columns,
            num_models,
            dim,
            num_models - 1,
            FLAGS.scale_micro_batch,
            components_path=components_path,
        )
        fitted = time.perf_counter() - start
        print(
            f"streaming dual PCA, k={num_models - 1}, micro_batch={FLAGS.scale_micro_batch}: "
            f"{fitted:.1f} s (compilation included)"
        )
        print(
            f"total explained variance {float(np.sum(state.explained_variance)):.1f}, "
            f"expected about D * noise^2 = {dim * noise**2:.1f}"
        )
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    finally:
        zoo_path.unlink(missing_ok=True)
        zoo_path.with_name(zoo_path.name + ".partial").unlink(missing_ok=True)  # write_rows' file before its rename
        components_path.unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.scale_test:
        scale_test()
    else:
        table()


if __name__ == "__main__":
    app.run(main)
