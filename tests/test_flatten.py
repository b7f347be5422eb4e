import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwf_jax.flatten import flatten_zoo, unflattener, unstack
from dwf_jax.models import MLP


def _zoo(num_models):
    model = MLP((16, 3))
    return jax.vmap(lambda k: model.init(k, jnp.zeros((1, 4))))(jax.random.split(jax.random.key(0), num_models))


def test_flatten_unflatten_round_trip():
    zoo = _zoo(5)
    matrix = flatten_zoo(zoo)
    assert matrix.shape == (5, 131)
    restored = unflattener(unstack(zoo, 0))(matrix)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), zoo, restored)


def test_rows_are_models():
    zoo = _zoo(3)
    matrix = flatten_zoo(zoo)
    single = flatten_zoo(jax.tree.map(lambda leaf: leaf[1:2], zoo))
    np.testing.assert_array_equal(matrix[1], single[0])


def test_unflatten_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\(N, 131\)"):
        unflattener(unstack(_zoo(2), 0))(np.zeros((2, 130)))
