"""A ResNet-18 zoo canonicalized, flattened and PCA-reduced model by model from disk, with its peak RSS.

The zoo is synthetic (not trained): one ResNet-18 with random weights and
running statistics, and N-1 copies of it, each with a random hidden-unit
permutation planted and Gaussian noise (std --noise) added. That gives weight
matching a known answer at full scale: after alignment every model must lie
about noise * sqrt(D) from the reference. The pipeline of stages:

1. write the zoo to a raw (N, D) float32 file, one model in memory at a time;
2. align every model to model 0 (Git Re-Basin, `canonical.align_models`),
   reading one model from the zoo file and appending it to the canonical file;
3. streaming dual PCA (N-1 components) of the canonical file, components to a file.

  nice -n 19 /usr/bin/time -v .venv/bin/python benchmarks/resnet18_stream.py --num_models=20
"""

import pathlib
import resource
import shutil
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dwf_jax import pca
from dwf_jax import permutations as perm
from dwf_jax.canonical import align_models
from dwf_jax.models import resnet18, resnet_permutation_spec
from dwf_jax.zoo_store import Flattener, write_rows

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_models", 20, "Models N in the synthetic zoo.")
flags.DEFINE_float("noise", 1e-3, "Std of the noise added to each permuted copy.")
flags.DEFINE_integer("micro_batch", 131_072, "Columns per block of the streaming dual PCA.")
flags.DEFINE_string("dir", "/tmp", "Where the zoo, canonical and components files go (deleted at the end).")
flags.DEFINE_integer("seed", 0, "Seed of the reference model, the planted permutations and the noise.")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reference_model(key: jax.Array) -> dict:
    """ResNet-18 variables with random running statistics too, so mis-permuted BN stats would show."""
    variables = resnet18().init(key, jnp.zeros((1, 32, 32, 3)), train=False)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    batch_stats = treedef.unflatten(
        [
            jax.random.uniform(leaf_key, leaf.shape, minval=0.5, maxval=2.0)
            if path[-1].key == "var"
            else 0.1 * jax.random.normal(leaf_key, leaf.shape)
            for leaf_key, (path, leaf) in zip(keys, leaves, strict=False)
        ]
    )
    return jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": batch_stats})


def permuted_copies(reference: dict, spec: dict) -> Iterator[dict]:
    rng = np.random.default_rng(FLAGS.seed)
    yield reference
    for index in range(1, FLAGS.num_models):
        planted = perm.random_permutation(jax.random.key(FLAGS.seed + index), spec, reference)
        noisy = jax.tree.map(lambda leaf: leaf + FLAGS.noise * rng.standard_normal(leaf.shape, np.float32), reference)
        yield jax.tree.map(np.asarray, perm.apply_permutation(spec, planted, noisy))


def main(argv: list[str]) -> None:
    del argv
    spec = resnet_permutation_spec(4, 2)
    reference = reference_model(jax.random.key(FLAGS.seed))
    flattener = Flattener(reference)
    flat_reference, dim = flattener.flatten(reference), flattener.dim
    directory = pathlib.Path(FLAGS.dir)
    paths = [directory / f"dwf_resnet18_{name}.f32" for name in ("zoo", "canonical", "components")]
    needed, free = 4 * dim * (3 * FLAGS.num_models - 1), shutil.disk_usage(directory).free
    if free < 1.1 * needed:
        raise SystemExit(f"{directory} has {free / 1e9:.1f} GB free; this run needs {needed / 1e9:.1f} GB: pass --dir")
    print(
        f"ResNet-18: D = {dim:,} weights (params and BN statistics); N = {FLAGS.num_models}; "
        f"{4 * dim * FLAGS.num_models / 1e9:.2f} GB per zoo file"
    )
    try:
        start = time.perf_counter()
        zoo = write_rows(paths[0], map(flattener.flatten, permuted_copies(reference, spec)))
        print(
            f"1. wrote the synthetic zoo in {time.perf_counter() - start:.1f} s; "
            f"peak RSS so far {peak_rss_gib():.2f} GiB"
        )

        start = time.perf_counter()
        aligned = align_models(jax.random.key(1), spec, flattener.unflatten(zoo.read(0)), flattener.models(zoo), 0)
        canonical = write_rows(paths[1], map(flattener.flatten, aligned))
        seconds = time.perf_counter() - start
        distances = np.array(
            [
                [np.linalg.norm(file.read(i) - flat_reference) for file in (zoo, canonical)]
                for i in range(1, zoo.num_models)
            ]
        )
        print(
            f"2. aligned {zoo.num_models - 1} models to model 0 in {seconds:.1f} s "
            f"({seconds / (zoo.num_models - 1):.1f} s/model); "
            f"distance to the reference: before {distances[:, 0].mean():.1f}, after {distances[:, 1].mean():.3f} "
            f"(max {distances[:, 1].max():.3f}; "
            f"noise alone gives {FLAGS.noise * np.sqrt(dim):.3f}); peak RSS so far {peak_rss_gib():.2f} GiB"
        )

        start = time.perf_counter()
        state, _ = pca.fit_transform_dual_streaming(
            canonical.columns,
            canonical.num_models,
            dim,
            canonical.num_models - 1,
            FLAGS.micro_batch,
            components_path=paths[2],
        )
        print(
            f"3. streaming dual PCA (k={canonical.num_models - 1}, {FLAGS.micro_batch} columns/block) "
            f"in {time.perf_counter() - start:.1f} s; "
            f"total explained variance {float(np.sum(state.explained_variance)):.3f} (noise alone gives about "
            f"{dim * FLAGS.noise**2 * (1 - 1 / zoo.num_models):.3f})"
        )
        print(f"peak RSS of this process: {peak_rss_gib():.2f} GiB")
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    app.run(main)
