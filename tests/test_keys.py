"""Random streams: zoo model keys are as they always were, and no stage key equals a model key."""

import jax
import numpy as np
import pytest

from dwf_jax import keys


def _key_data(key: jax.Array) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(key)).tolist())


def test_model_keys_are_the_fold_in_of_the_model_index():
    init, data = keys.model_keys(7, np.array([0, 3]))
    expected = jax.random.split(jax.random.fold_in(jax.random.key(7), 3))
    assert _key_data(init[1]) == _key_data(expected[0]) and _key_data(data[1]) == _key_data(expected[1])


def test_stage_keys_differ_from_every_model_key_and_from_each_other():
    seed = 3
    stage = {_key_data(keys.stage_key(seed, name)) for name in keys.STAGE_STREAMS}
    assert len(stage) == len(keys.STAGE_STREAMS)
    models = {_key_data(jax.random.fold_in(jax.random.key(seed), index)) for index in range(2000)}
    assert not stage & models


def test_unknown_streams_and_indices_are_refused():
    with pytest.raises(ValueError, match="unknown random stream 'flows'"):
        keys.stage_key(0, "flows")
    with pytest.raises(ValueError, match=r"model indices must lie in \[0, 2147483648\)"):
        keys.model_keys(0, np.array([2**31]))
