"""The model axis over devices and hosts: one jax.sharding.Mesh, each device computing its share of the models.

Every stage that runs the same function for every model of a zoo (training,
evaluation, BatchNorm recalibration, sampling) wraps its per-shard function with
`over_models`. Under `jax.set_mesh(model_mesh(n))` the leading (model) axis is
split over the mesh's `models` axis with `jax.shard_map`; a model count that the
device count does not divide is padded with copies of the last model, which are
dropped again (which gathers the results onto every device). Results that the host
reads are `gathered`: a process reads only arrays that live on its own devices. Without a mesh of
more than one device the function runs as is, so one device computes exactly
what it always did. Models never talk to each other, so the per-model work needs
no collectives: across hosts, each process computes only its own models.
"""

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
MODEL_AXIS = "models"


def model_mesh(num_devices: int = 0) -> Mesh:
    """A one-axis mesh over the first `num_devices` devices of every process (0: all of them)."""
    devices = jax.devices()
    if not 0 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices}, but {len(devices)} devices are visible (0 = all of them)")
    if jax.process_count() > 1 and num_devices not in (0, len(devices)):
        raise ValueError(
            f"num_devices={num_devices}: a run of {jax.process_count()} processes uses every device of each "
            f"(num_devices=0 or {len(devices)})"
        )
    return Mesh(np.asarray(devices[: num_devices or len(devices)]), (MODEL_AXIS,))


def split_models(num_devices: int = 0) -> contextlib.AbstractContextManager:
    """The context in which every stage splits its models over `num_devices` devices (none for one device)."""
    mesh = model_mesh(num_devices)
    return jax.set_mesh(mesh) if mesh.size > 1 else contextlib.nullcontext()


def mesh_size() -> int:
    """The number of devices the model axis is split over in the current context (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or MODEL_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[MODEL_AXIS]


def padded_count(num_models: int, num_devices: int) -> int:
    """The smallest multiple of `num_devices` that holds `num_models`."""
    return -(-num_models // num_devices) * num_devices


def process_rows(num_models: int) -> np.ndarray:
    """Rows of the padded model axis that this process's devices compute (every row without a mesh)."""
    if mesh_size() == 1:
        return np.arange(num_models)
    mesh = jax.sharding.get_mesh()
    count = padded_count(num_models, mesh.size)
    slices = NamedSharding(mesh, P(MODEL_AXIS)).addressable_devices_indices_map((count,)).values()
    return np.unique(np.concatenate([np.arange(count)[index] for index in slices]))


def pad_models(tree: PyTree, count: int) -> PyTree:
    """Every leaf's leading axis grown to `count` with copies of its last entry."""

    def pad(leaf):
        extra = count - leaf.shape[0]
        return leaf if extra == 0 else jnp.concatenate([leaf, jnp.repeat(leaf[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def over_models(fn: Callable[..., PyTree], num_sharded: int = 1) -> Callable[..., PyTree]:
    """`fn(*stacked, *shared)` with its first `num_sharded` arguments split over the mesh's model axis.

    `fn` maps stacked models to stacked results (every output leaf has the model
    axis first); the remaining arguments (data, flow parameters) are given whole
    to every device. Call it inside jit.
    """

    @functools.wraps(fn)
    def sharded(*args):
        devices = mesh_size()
        if devices == 1:
            return fn(*args)
        stacked, shared = args[:num_sharded], args[num_sharded:]
        num_models = jax.tree.leaves(stacked)[0].shape[0]
        padded = pad_models(stacked, padded_count(num_models, devices))
        specs = (P(MODEL_AXIS),) * num_sharded + (P(),) * len(shared)
        outputs = jax.shard_map(fn, in_specs=specs, out_specs=P(MODEL_AXIS))(*padded, *shared)
        return jax.tree.map(lambda leaf: leaf[:num_models], outputs)

    return sharded


def gathered(tree: PyTree) -> PyTree:
    """Results that every process reads on its host, replicated when the mesh spans several processes
    (one process reads a sharded array as it is). Call it on the results of `over_models`, inside jit."""
    if jax.process_count() == 1 or mesh_size() == 1:
        return tree
    return jax.lax.with_sharding_constraint(tree, P())


def to_host(tree: PyTree) -> PyTree:
    """Numpy copies of (possibly sharded) arrays, whole on every process: models of other hosts are fetched."""

    def whole(leaf):
        if jax.process_count() == 1 or not isinstance(leaf, jax.Array):
            return np.asarray(leaf)
        return multihost_utils.process_allgather(leaf, tiled=True)

    return jax.tree.map(whole, tree)
