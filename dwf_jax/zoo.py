"""Train a zoo of N models from N seeds as one jitted program over the model axis (vmap).

Model i's init and data order depend only on (seed, i), so a zoo trained in
chunks, or model by model, gives the same weights as one trained all at once.
"""

import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from dwf_jax.augment import InputPipeline
from dwf_jax.checkpoints import TrainingCheckpoints
from dwf_jax.keys import model_keys
from dwf_jax.sharding import over_models, to_host

PyTree = Any
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")
StepFn = Callable[..., tuple[tuple[PyTree, PyTree], jax.Array]]


class ZooDiverged(FloatingPointError):
    """Some models' training loss became non-finite or far above the loss of guessing."""


def check_losses(losses: np.ndarray, max_loss: float, epoch: int, model_indices: np.ndarray) -> None:
    """Raise naming the models whose mean loss of an epoch is non-finite or above `max_loss`.

    Adam takes bounded steps, so a far too large rate gives huge weights and losses, never NaN: NaN checks alone
    would let such a zoo run to a full report.
    """
    bad = np.flatnonzero(~(np.abs(losses) <= max_loss))
    if len(bad):
        shown = ", ".join(f"model {model_indices[i]}: {losses[i]:.3g}" for i in bad[:3])
        raise ZooDiverged(
            f"zoo training diverged in epoch {epoch}: {len(bad)} of {len(losses)} models have a mean loss above "
            f"{max_loss:.3g} (far above the loss of guessing) or not finite ({shown}). Lower zoo.learning_rate"
        )


def learning_rate_schedule(learning_rate: float, schedule: str = "none", total_steps: int = 1) -> optax.Schedule:
    """The zoo's rate at each optimizer step (0-based; Table 12): constant, or cosine annealing over all steps
    (ResNet-18). A function of the step, so that the training curves show the rate each step used."""
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, decay_steps=total_steps)
    if schedule == "none":
        return optax.constant_schedule(learning_rate)
    raise ValueError(f"unknown zoo schedule {schedule!r}; choose one of {list(SCHEDULES)}")


def make_optimizer(
    name: str, learning_rate: float, weight_decay: float, schedule: str = "none", total_steps: int = 1
) -> optax.GradientTransformation:
    """The zoo optimizers of Table 12 at the rates of `learning_rate_schedule`.

    A constant rate stays a number: an optax schedule would add a step count to the optimizer state, and so to
    the zoo's training checkpoints.
    """
    rate = learning_rate if schedule == "none" else learning_rate_schedule(learning_rate, schedule, total_steps)
    if name == "adam":
        return optax.adam(rate)
    if name == "adamw":
        return optax.adamw(rate, weight_decay=weight_decay)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(rate, momentum=0.9))
    raise ValueError(f"unknown zoo optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def epoch_plan(
    data_key: jax.Array, epoch: jax.Array, num_examples: int, batch_size: int, drop_last: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One model's minibatches for one epoch: (indices, loss weights, step keys), each with a leading batch axis.

    Without drop_last the last partial minibatch is padded and masked out of the
    loss (PyTorch's drop_last=False); BatchNorm models drop it instead, since
    padding would leak into the batch statistics.
    """
    num_batches = num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)
    padding = max(0, num_batches * batch_size - num_examples)
    order_key, steps_key = jax.random.split(jax.random.fold_in(data_key, epoch))
    order = jax.random.permutation(order_key, num_examples)
    order = jnp.concatenate([order, jnp.zeros(padding, order.dtype)])[: num_batches * batch_size].reshape(
        num_batches, batch_size
    )
    mask = (jnp.arange(num_batches * batch_size) < num_examples).reshape(num_batches, batch_size)
    return order, mask.astype(jnp.float32), jax.random.split(steps_key, num_batches)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    inputs: InputPipeline,
    regression: bool = False,
    compute_dtype: str = "float32",
) -> StepFn:
    """`step((variables, opt_state), (indices, weights, key), x, y) -> ((variables, opt_state), loss)` for one model.

    The loss is softmax cross-entropy on class labels, or squared error on scores (`regression`).
    `compute_dtype` bfloat16 is mixed precision: the forward and backward pass see bf16 copies of the
    weights and inputs, while the float32 weights (and BatchNorm statistics) are what the optimizer updates.
    """
    dtype = jnp.dtype(compute_dtype)

    def lowered(tree: PyTree) -> PyTree:
        return jax.tree.map(lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, tree)

    def step(carry, batch, x, y):
        variables, opt_state = carry
        indices, weights, key = batch
        augment_key, dropout_key = jax.random.split(key)
        images = inputs.train(augment_key, x[indices])

        def loss_fn(params):
            outputs, state = model.apply(
                {**variables, "params": lowered(params)},
                lowered(images),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            outputs = outputs.astype(jnp.float32)
            if regression:
                losses = optax.squared_error(outputs, y[indices])
            else:
                losses = optax.softmax_cross_entropy_with_integer_labels(outputs, y[indices])
            return jnp.sum(losses * weights) / jnp.sum(weights), state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"])
        return ({**variables, **state, "params": optax.apply_updates(variables["params"], updates)}, opt_state), loss

    return step


def _groups(num_models: int, models_per_vmap: int) -> list[slice]:
    width = models_per_vmap or num_models
    return [slice(start, min(start + width, num_models)) for start in range(0, num_models, width)]


class EpochRunner(NamedTuple):
    """One zoo's compiled training: an epoch's minibatch plans, and the steps of an epoch as one
    `lax.scan` per vmapped group (`scan_steps`) or one dispatch per minibatch."""

    plan: Callable[[jax.Array, int], tuple[jax.Array, jax.Array, jax.Array]]
    step_group: Callable[..., tuple[tuple[PyTree, PyTree], jax.Array]]
    scan_steps: bool
    num_batches: int

    def epoch(self, carries: list, plans: list, x: jax.Array, y: jax.Array, bar: tqdm) -> tuple[list, jax.Array]:
        """Every group's carry after one epoch, and each model's loss per step (models, steps)."""
        if self.scan_steps:
            results = [self.step_group(carry, batches, x, y) for carry, batches in zip(carries, plans, strict=True)]
            bar.update(self.num_batches)
            return [carry for carry, _ in results], jnp.concatenate([losses for _, losses in results])
        steps = []
        for index in range(self.num_batches):
            batches = [jax.tree.map(lambda a, step=index: a[:, step], plan) for plan in plans]
            results = [self.step_group(carry, batch, x, y) for carry, batch in zip(carries, batches, strict=True)]
            carries = [carry for carry, _ in results]
            steps.append(jnp.concatenate([losses for _, losses in results]))
            bar.update(1)
        return carries, jnp.stack(steps, axis=1)


def epoch_runner(step: StepFn, num_examples: int, batch_size: int, drop_last: bool, scan_steps: bool) -> EpochRunner:
    """`step` vmapped over the models of a group, split over devices (`over_models`) and compiled."""
    plan = jax.jit(
        jax.vmap(lambda key, epoch: epoch_plan(key, epoch, num_examples, batch_size, drop_last), in_axes=(0, None))
    )

    def scanned(carry, batches, x, y):
        return jax.lax.scan(lambda c, b: step(c, b, x, y), carry, batches)

    one_model = scanned if scan_steps else step
    step_group = jax.jit(over_models(jax.vmap(one_model, in_axes=(0, 0, None, None)), num_sharded=2), donate_argnums=0)
    num_batches = num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)
    return EpochRunner(plan, step_group, scan_steps, num_batches)


def train_models(
    model: nn.Module,
    tx: optax.GradientTransformation,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    seed: int,
    model_indices: np.ndarray,
    epochs: int,
    init: Callable[[jax.Array, jax.Array, jax.Array], PyTree] | None = None,
    batch_size: int,
    inputs: InputPipeline,
    drop_last: bool = False,
    models_per_vmap: int = 0,
    scan_steps: bool = True,
    saves: TrainingCheckpoints | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    regression: bool = False,
    max_loss: float = math.inf,
    compute_dtype: str = "float32",
    on_epoch: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[PyTree, np.ndarray]:
    """Train the given models; returns stacked variables and each model's mean loss in the last epoch.

    Models are vmapped `models_per_vmap` at a time (0: all together) and an
    epoch is one `lax.scan` (`scan_steps`) or one dispatch per minibatch. Both
    knobs change speed, never results: XLA's CPU backend runs convolution
    gradients inside loops and vmaps several times slower than alone, so CNN
    configs on CPU use one model at a time and no scan. With `saves`, the
    state is saved every `checkpoint_every` epochs (step = epochs done) and
    training continues from the latest save that restores. `init(key, model_index,
    sample)` draws a model's variables (default: `model.init`; a mixed-init zoo
    passes `models.model_initializer`). A model whose mean loss of an epoch exceeds
    `max_loss` (or is not finite) stops training with `ZooDiverged`, before that epoch is saved.
    `compute_dtype` "bfloat16" trains in mixed precision (`make_train_step`). `on_epoch(epoch, losses)` sees each
    epoch this call trains (1-based, so the first call tells where training resumed) and each model's mean loss in
    it, a diverging one included, before the epoch is checked and saved: the training curves (`dwf_jax.curves`).
    """
    init_keys, data_keys = model_keys(seed, model_indices)
    sample = inputs.eval(jnp.asarray(x_train[:1]))
    init = init or (lambda key, index, sample: model.init({"params": key, "dropout": key}, sample, train=False))
    variables = jax.jit(over_models(jax.vmap(init, in_axes=(0, 0, None)), num_sharded=2))(
        init_keys, jnp.asarray(model_indices), sample
    )
    opt_state = jax.jit(over_models(jax.vmap(lambda v: tx.init(v["params"]))))(variables)
    runner = epoch_runner(
        make_train_step(model, tx, inputs, regression, compute_dtype), len(x_train), batch_size, drop_last, scan_steps
    )
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    state = {"variables": variables, "opt_state": opt_state, "losses": jnp.zeros(len(model_indices))}
    start = 0
    restored = saves.restore_latest(state) if saves is not None else None
    if restored is not None:
        start, state = restored
    groups = _groups(len(model_indices), models_per_vmap)
    carries = [
        jax.tree.map(lambda leaf, rows=group: leaf[rows], (state["variables"], state["opt_state"])) for group in groups
    ]
    bar = tqdm(
        total=(epochs - start) * runner.num_batches,
        desc=f"zoo models {model_indices[0]}-{model_indices[-1]}",
        disable=not progress,
        unit="step",
    )
    # An error ends the bar's line before its message; an interrupted run finishes its save.
    with bar, saves if saves is not None else contextlib.nullcontext():
        for epoch in range(start, epochs):
            plans = [runner.plan(data_keys[group], epoch) for group in groups]
            carries, losses = runner.epoch(carries, plans, x_train, y_train, bar)
            stacked = jax.tree.map(lambda *parts: jnp.concatenate(parts), *carries)
            state = {"variables": stacked[0], "opt_state": stacked[1], "losses": jnp.mean(losses, axis=1)}
            epoch_losses = to_host(state["losses"])
            if on_epoch is not None:
                on_epoch(epoch + 1, epoch_losses)
            check_losses(epoch_losses, max_loss, epoch + 1, np.asarray(model_indices))
            if saves is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                saves.save(epoch + 1, to_host(state))
            if progress:
                bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_losses.mean():.4f}")
    return to_host(state["variables"]), to_host(state["losses"])


def chunks(num_models: int, models_per_chunk: int) -> list[np.ndarray]:
    """Model indices split into chunks that fit in memory together."""
    return [
        np.arange(start, min(start + models_per_chunk, num_models)) for start in range(0, num_models, models_per_chunk)
    ]
