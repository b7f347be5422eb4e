"""Canonicalization time of a ViT-Small-192 zoo: TransFusion against Git Re-Basin, side by side in one run.

Aligns --models freshly initialised ViT-Small-192 networks (2.7M parameters
each) to another one with each method at max_iter --max_iter, and prints the
time per model, the ratio, and the mean distance to the reference before and
after. Freshly initialised weights time the matching itself; trained zoos align
differently (the paper reports 13 min for 100 trained ViTs on an A100).

  nice -n 19 .venv/bin/python benchmarks/transfusion_time.py --models=4
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dwf_jax import permutations
from dwf_jax.models import specs
from dwf_jax.models.vit import ViT

FLAGS = flags.FLAGS
flags.DEFINE_integer("models", 4, "Models aligned to the reference by each method.")
flags.DEFINE_integer("max_iter", 10, "Weight-matching sweeps (the ViT config's canonical.max_iter).")


def distance(a, b) -> float:
    return float(
        np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))
    )


def main(argv: list[str]) -> None:
    del argv
    model, depth = ViT(), ViT().depth
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3))))
    reference = jax.tree.map(np.asarray, init(jax.random.key(0)))
    zoo = [jax.tree.map(np.asarray, init(jax.random.key(1 + i))) for i in range(FLAGS.models)]
    spec = specs.vit_permutation_spec(depth)
    methods = {
        "Git Re-Basin": lambda key, params: permutations.weight_matching(key, spec, reference, params, FLAGS.max_iter),
        "TransFusion": lambda key, params: permutations.transfusion(
            key, spec, reference, params, specs.head_groups("block", depth), FLAGS.max_iter
        ),
    }
    before = np.mean([distance(params, reference) for params in zoo])
    seconds = {}
    for name, align in methods.items():
        start = time.perf_counter()
        results = [align(jax.random.key(i), params) for i, params in enumerate(zoo)]
        seconds[name] = (time.perf_counter() - start) / len(zoo)
        after = np.mean(
            [
                distance(permutations.apply_permutation(spec, r.perms, p), reference)
                for r, p in zip(results, zoo, strict=True)
            ]
        )
        print(f"{name:13s} {seconds[name]:7.2f} s per model; distance to reference {before:.2f} -> {after:.2f}")
    print(f"TransFusion / Git Re-Basin time: {seconds['TransFusion'] / seconds['Git Re-Basin']:.2f}")


if __name__ == "__main__":
    app.run(main)
