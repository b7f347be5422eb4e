"""Finetuning the flow itself on a task, through its sampler (FLoWN, Sec. 3.1 "Fine-tuning the meta-model on OOD
data"): generate nets, score them on target-task minibatches, and backpropagate the loss through the ODE solver
into the velocity field's parameters.

Why the sampler is re-implemented here rather than differentiated as it is: `sample.integrate` keeps every RK4
stage's activations for the backward pass. `integrate_detached` takes FLoWN's stopgrad (no gradient flows through
the steps before a time t', which saves their backward pass) and rematerialises each differentiable step
(`jax.checkpoint`), so the backward pass holds one (models, dim) state per step and one step's activations at a
time. Its forward values are the sampler's bit for bit: both take their step formula from `sample.ode_step`.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dwf_jax.flow.model import VelocityField
from dwf_jax.flow.sample import Velocity, num_function_evals, ode_step, time_field
from dwf_jax.flow.source import Source, draw
from dwf_jax.pca.dual import PCAState
from dwf_jax.sharding import gathered, mesh_size, pad_models, padded_count
from dwf_jax.zoo_store import Flattener

PyTree = Any
Decoder = Callable[[jax.Array], PyTree]  # (M, k) rows of the flow's space -> stacked network variables
NetApply = Callable[[PyTree, jax.Array], jax.Array]  # (one net's variables, inputs) -> logits


def detached_steps(detach_time: float, num_steps: int) -> int:
    """How many leading steps run without gradient: floor(t' * num_steps), the steps that end at or before t'.

    A step that straddles t' stays differentiable. The product is rounded first so that 0.29 * 100 counts 29.
    """
    if not 0.0 <= detach_time <= 1.0:  # NaN fails too
        raise ValueError(f"detach_time={detach_time}: the stopgrad time t' must lie in [0, 1] (0 detaches nothing)")
    return math.floor(round(detach_time * num_steps, 9))


def integrate_detached(
    velocity: Velocity, x0: jax.Array, num_steps: int, method: str = "rk4", detach_time: float = 0.0
) -> jax.Array:
    """`sample.integrate`'s x1, differentiable in what `velocity` closes over, but not through its first
    `detached_steps(detach_time, num_steps)` steps; the other steps are rematerialised in the backward pass."""
    num_function_evals(method, num_steps)
    chex.assert_rank(x0, 2)  # (models, dim)
    frozen = detached_steps(detach_time, num_steps)
    dt = 1.0 / num_steps
    num_models = x0.shape[0]
    x = pad_models(x0, padded_count(num_models, mesh_size()))

    def steps(field: Callable, x: jax.Array, first: int, stop: int, remat: bool) -> jax.Array:
        def scan_step(x, i):
            return ode_step(field, x, i.astype(x.dtype) * dt, dt, method), None

        return jax.lax.scan(jax.checkpoint(scan_step) if remat else scan_step, x, jnp.arange(first, stop))[0]

    field = time_field(velocity)
    if frozen:
        # No gradient leaves the detached steps, so autodiff prunes their tangents: no residuals, no backward pass.
        x = jax.lax.stop_gradient(steps(field, x, 0, frozen, remat=False))
    if frozen < num_steps:
        x = steps(field, x, frozen, num_steps, remat=True)
    return gathered(x[:num_models])


def full_weight_decoder(flattener: Flattener) -> Decoder:
    """The flow lives in full weight space: its rows are the networks' flattened variables."""
    return flattener.unflatten_rows


def pca_decoder(state: PCAState, flattener: Flattener) -> Decoder:
    """The flow lives in PCA space: the linear inverse transform (coefficients @ components + mean), then unflatten."""
    components, mean = jnp.asarray(state.components), jnp.asarray(state.mean)
    return lambda rows: flattener.unflatten_rows(rows @ components + mean)


def column_decoder(base_row: np.ndarray | jax.Array, columns: np.ndarray, flattener: Flattener) -> Decoder:
    """The flow lives on a subset of one base network's weights (FLoWN finetunes only ResNet-18's BatchNorm
    parameters): each row's values are written into `columns` of the base network's flattened weights."""
    base, columns = jnp.asarray(base_row), jnp.asarray(columns)
    if base.shape != (flattener.dim,):
        raise ValueError(f"the base network has {base.shape} weights, the architecture {flattener.dim}")
    return lambda rows: flattener.unflatten_rows(jnp.tile(base, (rows.shape[0], 1)).at[:, columns].set(rows))


def batchnorm_columns(template: PyTree) -> np.ndarray:
    """Columns (in `Flattener` order) of the BatchNorm scales and biases: the `params` leaves `scale` / `bias` of
    every module that also keeps running statistics in `batch_stats`."""
    statistics = jax.tree.leaves_with_path(template.get("batch_stats", {}))
    with_stats = {tuple(getattr(key, "key", key) for key in path[:-1]) for path, _ in statistics}
    picked, offset = [], 0
    for path, leaf in jax.tree.leaves_with_path(template):
        names = tuple(getattr(key, "key", key) for key in path)
        size = int(np.prod(leaf.shape))
        if names[0] == "params" and names[-1] in ("scale", "bias") and names[1:-1] in with_stats:
            picked.append(np.arange(offset, offset + size))
        offset += size
    if not picked:
        raise ValueError("these variables have no BatchNorm parameters (no `params` module with `batch_stats`)")
    return np.concatenate(picked)


class Finetuning(NamedTuple):
    """How the flow is finetuned (FLoWN Table 9: AdamW, detach at t' = 0.4); recorded beside the results."""

    steps: int  # optimizer steps
    learning_rate: float  # AdamW's, constant
    weight_decay: float = 0.0
    num_samples: int = 8  # generated nets per step (the loss is their mean)
    batch_size: int = 128  # target-task examples per step, shared by the nets
    ode_steps: int = 20
    method: str = "rk4"
    detach_time: float = 0.4


def mean_cross_entropy(apply_net: NetApply, nets: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cross-entropy of every stacked net on one minibatch, averaged over nets and examples."""
    logits = jax.vmap(lambda variables: apply_net(variables, x))(nets)  # (M, B, classes)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[None]))


def finetune_flow(
    model: VelocityField,
    params: PyTree,
    decode: Decoder,
    apply_net: NetApply,
    x_train: np.ndarray,
    y_train: np.ndarray,
    key: jax.Array,
    *,
    source: Source,
    settings: Finetuning,
) -> tuple[PyTree, np.ndarray]:
    """The flow's parameters after `settings.steps` AdamW steps on the mean cross-entropy of its generated nets
    (`decode` of `integrate_detached`'s samples) on target-task minibatches, and the loss of each step.

    Step s draws its source points and its minibatch from fold_in(key, s): the nets are new at every step, so the
    flow, not one ensemble, learns the task.
    """
    detached_steps(settings.detach_time, settings.ode_steps)  # refused before anything is compiled
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    tx = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)

    def loss_fn(params: PyTree, step_key: jax.Array) -> jax.Array:
        noise_key, batch_key = jax.random.split(step_key)
        x0 = draw(source, noise_key, (settings.num_samples, model.dim))
        rows = integrate_detached(
            lambda x, t: model.apply({"params": params}, x, t, train=False),
            x0,
            settings.ode_steps,
            settings.method,
            settings.detach_time,
        )
        batch = jax.random.randint(batch_key, (settings.batch_size,), 0, x_train.shape[0])
        return mean_cross_entropy(apply_net, decode(rows), x_train[batch], y_train[batch])

    @jax.jit
    def train_step(params: PyTree, opt_state: PyTree, step: jax.Array) -> tuple[PyTree, PyTree, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(key, step))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for step in range(settings.steps):
        params, opt_state, loss = train_step(params, opt_state, jnp.asarray(step))
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses), np.float32)
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"finetuning loss became non-finite at step {int(np.argmin(np.isfinite(losses)))}")
    return params, losses
