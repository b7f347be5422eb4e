"""Train a zoo of N models from N seeds as one vmapped, jitted program.

Model i's init and data order depend only on (seed, i), so a zoo trained in
chunks, or model by model, gives the same weights as one trained all at once.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

PyTree = Any
EpochFn = Callable[..., tuple[PyTree, PyTree, jax.Array]]


def make_optimizer(name: str, learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """The zoo optimizers of Table 12 (no schedule for the MLP zoos)."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=0.9))
    raise ValueError(f"unknown zoo optimizer {name!r}; choose adam, adamw or sgd")


def model_keys(seed: int, model_indices: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Per-model (init, data-order) keys, derived from the model's index alone."""
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(jax.random.key(seed), i)))(
        jnp.asarray(model_indices, dtype=jnp.uint32)
    )
    return keys[:, 0], keys[:, 1]


def make_train_epoch(model: nn.Module, tx: optax.GradientTransformation, batch_size: int, num_examples: int) -> EpochFn:
    """One epoch of one model: shuffled minibatches, the last one partial (like drop_last=False)."""
    num_batches = math.ceil(num_examples / batch_size)
    padding = num_batches * batch_size - num_examples
    mask = (jnp.arange(num_batches * batch_size) < num_examples).reshape(num_batches, batch_size)

    def train_epoch(params, opt_state, data_key, epoch, x, y):
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
        order = jnp.concatenate([order, jnp.zeros(padding, order.dtype)]).reshape(num_batches, batch_size)

        def step(carry, batch):
            params, opt_state = carry
            indices, weights = batch

            def loss_fn(p):
                logits = model.apply(p, x[indices])
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, y[indices])
                return jnp.sum(losses * weights) / jnp.sum(weights)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (order, mask))
        return params, opt_state, jnp.mean(losses)

    return train_epoch


def train_models(
    model: nn.Module,
    tx: optax.GradientTransformation,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    seed: int,
    model_indices: np.ndarray,
    epochs: int,
    batch_size: int,
    progress: bool = True,
) -> tuple[PyTree, np.ndarray]:
    """Train the given models together (vmapped); returns stacked variables and final epoch losses."""
    init_keys, data_keys = model_keys(seed, model_indices)
    params = jax.jit(jax.vmap(lambda k: model.init(k, x_train[:1])))(init_keys)
    opt_state = jax.jit(jax.vmap(tx.init))(params)
    train_epoch = jax.jit(
        jax.vmap(make_train_epoch(model, tx, batch_size, len(x_train)), in_axes=(0, 0, 0, None, None, None)),
        donate_argnums=(0, 1),
    )
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    losses = jnp.zeros(len(model_indices))
    bar = tqdm(range(epochs), desc=f"zoo models {model_indices[0]}-{model_indices[-1]}", disable=not progress, unit="epoch")
    for epoch in bar:
        params, opt_state, losses = train_epoch(params, opt_state, data_keys, epoch, x_train, y_train)
        if progress:
            bar.set_postfix(loss=f"{float(jnp.mean(losses)):.4f}")
    return params, np.asarray(losses)


def chunks(num_models: int, models_per_chunk: int) -> list[np.ndarray]:
    """Model indices split into chunks that fit in memory together."""
    return [np.arange(start, min(start + models_per_chunk, num_models)) for start in range(0, num_models, models_per_chunk)]
