"""Train a zoo of N models from N seeds as one jitted program over the model axis (vmap).

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
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from dwf_jax.augment import InputPipeline
from dwf_jax.ensemble import map_models

PyTree = Any
EpochFn = Callable[..., tuple[PyTree, PyTree, jax.Array]]


def make_optimizer(
    name: str, learning_rate: float, weight_decay: float, schedule: str = "none", total_steps: int = 1
) -> optax.GradientTransformation:
    """The zoo optimizers of Table 12: constant rate, or cosine annealing over all steps (ResNet-18)."""
    if schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(learning_rate, decay_steps=total_steps)
    elif schedule != "none":
        raise ValueError(f"unknown zoo schedule {schedule!r}; choose none or cosine")
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


def make_train_epoch(
    model: nn.Module, tx: optax.GradientTransformation, batch_size: int, num_examples: int, inputs: InputPipeline, drop_last: bool
) -> EpochFn:
    """One epoch of one model over shuffled minibatches.

    Without drop_last the last partial minibatch is padded and masked out of the
    loss (PyTorch's drop_last=False); BatchNorm models drop it instead, since
    padding would leak into the batch statistics.
    """
    num_batches = num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)
    padding = max(0, num_batches * batch_size - num_examples)
    mask = (jnp.arange(num_batches * batch_size) < num_examples).reshape(num_batches, batch_size)

    def train_epoch(variables, opt_state, data_key, epoch, x, y):
        order_key, steps_key = jax.random.split(jax.random.fold_in(data_key, epoch))
        order = jax.random.permutation(order_key, num_examples)
        order = jnp.concatenate([order, jnp.zeros(padding, order.dtype)])[: num_batches * batch_size].reshape(num_batches, batch_size)

        def step(carry, batch):
            variables, opt_state = carry
            indices, weights, key = batch
            augment_key, dropout_key = jax.random.split(key)
            images = inputs.train(augment_key, x[indices])

            def loss_fn(params):
                logits, state = model.apply(
                    {**variables, "params": params}, images, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
                )
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, y[indices])
                return jnp.sum(losses * weights) / jnp.sum(weights), state

            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
            updates, opt_state = tx.update(grads, opt_state, variables["params"])
            variables = {**variables, **state, "params": optax.apply_updates(variables["params"], updates)}
            return (variables, opt_state), loss

        batches = (order, mask, jax.random.split(steps_key, num_batches))
        (variables, opt_state), losses = jax.lax.scan(step, (variables, opt_state), batches)
        return variables, opt_state, jnp.mean(losses)

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
    inputs: InputPipeline,
    drop_last: bool = False,
    models_per_vmap: int = 0,
    manager: ocp.CheckpointManager | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
) -> tuple[PyTree, np.ndarray]:
    """Train the given models together; returns stacked variables and final epoch losses.

    With a checkpoint `manager`, the state is saved every `checkpoint_every`
    epochs (step = epochs done) and training continues from the latest save.
    """
    init_keys, data_keys = model_keys(seed, model_indices)
    sample = inputs.eval(jnp.asarray(x_train[:1]))
    variables = jax.jit(jax.vmap(lambda k: model.init({"params": k, "dropout": k}, sample, train=False)))(init_keys)
    opt_state = jax.jit(jax.vmap(lambda v: tx.init(v["params"])))(variables)
    epoch_fn = make_train_epoch(model, tx, batch_size, len(x_train), inputs, drop_last)

    def train_epoch(variables, opt_state, data_keys, epoch, x, y):
        per_model = lambda state: epoch_fn(*state, epoch, x, y)  # noqa: E731
        return map_models(per_model, (variables, opt_state, data_keys), models_per_vmap)

    train_epoch = jax.jit(train_epoch, donate_argnums=(0, 1))
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    state = {"variables": variables, "opt_state": opt_state, "losses": jnp.zeros(len(model_indices))}
    start = 0
    if manager is not None and manager.latest_step() is not None:
        start = manager.latest_step()
        state = manager.restore(start, args=ocp.args.StandardRestore(state))
    bar = tqdm(range(start, epochs), desc=f"zoo models {model_indices[0]}-{model_indices[-1]}", disable=not progress, unit="epoch")
    for epoch in bar:
        variables, opt_state, losses = train_epoch(state["variables"], state["opt_state"], data_keys, epoch, x_train, y_train)
        state = {"variables": variables, "opt_state": opt_state, "losses": losses}
        if manager is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            manager.save(epoch + 1, args=ocp.args.StandardSave(state))
        if progress:
            bar.set_postfix(loss=f"{float(jnp.mean(losses)):.4f}")
    if manager is not None:
        manager.wait_until_finished()
    return state["variables"], np.asarray(state["losses"])


def chunks(num_models: int, models_per_chunk: int) -> list[np.ndarray]:
    """Model indices split into chunks that fit in memory together."""
    return [np.arange(start, min(start + models_per_chunk, num_models)) for start in range(0, num_models, models_per_chunk)]
