"""Flow training: a pure train step, many steps per dispatch with lax.scan.

Step s draws its minibatch, noise and dropout from fold_in(key, s), and the
minibatches walk an epoch-wise shuffle of the zoo, so a run resumed from a
checkpoint at step s continues exactly as an uninterrupted one.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dwf_jax.flow.loss import flow_matching_loss
from dwf_jax.flow.model import VelocityField
from dwf_jax.flow.source import Source

PyTree = Any


class FlowState(NamedTuple):
    params: PyTree
    opt_state: PyTree
    step: jax.Array


def learning_rate_schedule(learning_rate: float, iterations: int) -> optax.Schedule:
    """The rate of each step (0-based): cosine annealing to zero over the whole run. A function of the step, so
    that the training curves show the rate each step used."""
    return optax.cosine_decay_schedule(learning_rate, decay_steps=iterations)


def make_optimizer(learning_rate: float, weight_decay: float, iterations: int) -> optax.GradientTransformation:
    """AdamW (0.9, 0.95) at the rates of `learning_rate_schedule`."""
    return optax.adamw(learning_rate_schedule(learning_rate, iterations), b1=0.9, b2=0.95, weight_decay=weight_decay)


def create_flow_state(model: VelocityField, tx: optax.GradientTransformation, key: jax.Array) -> FlowState:
    x = jnp.zeros((1, model.dim))
    condition = jnp.zeros((1,), jnp.int32) if model.num_conditions else None
    support = jnp.zeros((1, model.condition_dim)) if model.condition_dim else None
    params = model.init(key, x, jnp.zeros((1,)), train=False, condition=condition, support=support)["params"]
    return FlowState(params, tx.init(params), jnp.zeros((), jnp.int32))


def minibatch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Indices of step's minibatch in an epoch-wise shuffle (a DataLoader with drop_last=True)."""
    steps_per_epoch = num_examples // batch_size
    order = jax.random.permutation(jax.random.fold_in(key, step // steps_per_epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(order, (step % steps_per_epoch) * batch_size, batch_size)


def make_train_chunk(
    model: VelocityField,
    tx: optax.GradientTransformation,
    *,
    batch_size: int,
    source: Source,
    sigma: float,
    time_distribution: str,
    beta: tuple[float, float],
    target_noise: float = 0.0,
) -> Callable[[FlowState, jax.Array, jax.Array, int], tuple[FlowState, jax.Array]]:
    """Returns jitted `train_chunk(state, key, data, num_steps, conditions=None) -> (state, per-step losses)`.

    `conditions` (one integer per row of `data`) is what a conditioned flow sees beside each row. A
    support-conditioned flow (`model.condition_dim` > 0) takes instead a pair `(bank, group)`: `bank` (G, B,
    condition_dim) holds B precomputed support embeddings for each of G groups (datasets), `group` (one integer per
    row) names each row's group, and every step gives each minibatch row one embedding of its group's bank, drawn
    uniformly from an extra stream (fold_in 2 of the step's key), so the flow sees many support sets per zoo model
    without encoding images inside the step. A fixed vector per row is the case B=1 with group = arange(rows).
    The streams of the other flows are unchanged.

    `target_noise` > 0 adds N(0, target_noise^2) per coordinate to each minibatch's targets (fresh each step, from
    fold_in 3 of the step's key): the flow is trained toward a blurred zoo, a regularizer against copying members.
    """

    def train_step(
        state: FlowState, key: jax.Array, data: jax.Array, conditions: jax.Array | tuple | None
    ) -> tuple[FlowState, jax.Array]:
        shuffle_key, step_key = jax.random.split(key)
        loss_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, state.step))
        indices = minibatch_indices(shuffle_key, state.step, data.shape[0], batch_size)
        x1, condition, support = data[indices], None, None
        if model.condition_dim:
            bank, group = conditions
            pick_key = jax.random.fold_in(jax.random.fold_in(step_key, state.step), 2)
            support = bank[group[indices], jax.random.randint(pick_key, (batch_size,), 0, bank.shape[1])]
        elif conditions is not None:
            condition = conditions[indices]
        if target_noise:
            noise_key = jax.random.fold_in(jax.random.fold_in(step_key, state.step), 3)
            x1 = x1 + target_noise * jax.random.normal(noise_key, x1.shape, x1.dtype)

        def loss_fn(params):
            def velocity(x, t):
                return model.apply(
                    {"params": params},
                    x,
                    t,
                    train=True,
                    condition=condition,
                    support=support,
                    rngs={"dropout": dropout_key},
                )

            return flow_matching_loss(
                velocity,
                loss_key,
                x1,
                source=source,
                sigma=sigma,
                time_distribution=time_distribution,
                beta=beta,
            )

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return FlowState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    def train_chunk(
        state: FlowState, key: jax.Array, data: jax.Array, num_steps: int, conditions: jax.Array | tuple | None = None
    ):
        return jax.lax.scan(lambda s, _: train_step(s, key, data, conditions), state, None, length=num_steps)

    return jax.jit(train_chunk, static_argnums=3, donate_argnums=0)


def make_validation_loss(
    model: VelocityField,
    *,
    source: Source,
    sigma: float,
    time_distribution: str,
    beta: tuple[float, float],
    draws: int = 16,
) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """Returns jitted `validation_loss(params, key, data)`: the flow-matching loss of `data` (models no step trained
    on), without dropout, averaged over `draws` draws of source points, times and noise from `key`, so that every
    evaluation of a run compares like with like (early stopping on held-out models)."""

    def validation_loss(params: PyTree, key: jax.Array, data: jax.Array) -> jax.Array:
        def velocity(x, t):
            return model.apply({"params": params}, x, t, train=False)

        def one(draw_key: jax.Array) -> jax.Array:
            return flow_matching_loss(
                velocity, draw_key, data, source=source, sigma=sigma, time_distribution=time_distribution, beta=beta
            )

        return jnp.mean(jax.lax.map(one, jax.random.split(key, draws)))

    return jax.jit(validation_loss)
