"""The README's embedding example runs as written and does what it says."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_permutation_example_runs_and_preserves_the_function():
    section = README.read_text().split("## Permutations in your own JAX project")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    x = jnp.linspace(-1, 1, 784 * 3).reshape(3, 784)
    net = namespace["net"]
    np.testing.assert_allclose(net.apply(namespace["a"], x), net.apply(namespace["a_permuted"], x), atol=1e-5)
    np.testing.assert_allclose(net.apply(namespace["b"], x), net.apply(namespace["b_aligned"], x), atol=1e-5)
    assert namespace["match"].converged
