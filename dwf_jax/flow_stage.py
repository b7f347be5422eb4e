"""Pipeline edges of the flow: resumable training with checkpoints, and ensemble sampling."""

import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from dwf_jax import checkpoints, flow, keys
from dwf_jax.curves import Curves, flow_scalars
from dwf_jax.zoo_store import Flattener

PyTree = Any


def build_flow(
    config: ml_collections.ConfigDict, dim: int, num_conditions: int = 0, condition_dim: int = 0
) -> flow.VelocityField:
    f = config.flow
    return flow.VelocityField(
        dim=dim,
        hidden=f.hidden,
        time_embed_dim=f.time_embed_dim,
        dropout=f.dropout,
        num_conditions=num_conditions,
        condition_dim=condition_dim,
    )


def flow_source(config: ml_collections.ConfigDict, template: PyTree) -> flow.Source:
    """N(0, flow.source_std^2) per coordinate, or (flow.source='kaiming') a Kaiming-initialised network's weights."""
    if config.flow.source == "kaiming":
        return flow.Source("uniform", jnp.asarray(Flattener(template).flatten(flow.kaiming_bounds(template))))
    return flow.Source("normal", config.flow.source_std)


def train_flow_stage(
    config: ml_collections.ConfigDict,
    weights: jax.Array,
    source: flow.Source,
    saves: checkpoints.TrainingCheckpoints,
    progress: bool,
    conditions: np.ndarray | None = None,
    num_conditions: int = 0,
    curves: pathlib.Path | None = None,
    condition_dim: int = 0,
    held_out: jax.Array | None = None,
) -> PyTree:
    """Train the flow on the zoo in its space ((N, D) weights or (N, k) coefficients), with checkpoints.

    A conditioned flow (`num_conditions` > 0) sees each row's integer in `conditions` (0..num_conditions-1).
    A support-conditioned flow (`condition_dim` > 0) takes `conditions` = (bank (G, B, condition_dim), group (N,)):
    each step each row sees one of its group's B support embeddings (`flow.make_train_chunk`).
    `curves`: the folder of its training curves (`dwf_jax.curves.flow_scalars` after each dispatched chunk).
    `held_out`: the held-out models in the flow's space; with flow.early_stopping the parameters kept are those of
    the flow.validate_every step with the lowest flow-matching loss on them (`EarlyStopping`).
    """
    f = config.flow
    if f.early_stopping and (held_out is None or num_conditions or condition_dim):
        raise ValueError("flow.early_stopping needs an unconditioned flow and held-out models (zoo.held_out > 0)")
    model = build_flow(config, weights.shape[1], num_conditions, condition_dim)
    if condition_dim:
        conditions = (jnp.asarray(conditions[0], jnp.float32), jnp.asarray(conditions[1], jnp.int32))
    elif num_conditions:
        conditions = jnp.asarray(conditions, jnp.int32)
    tx = flow.make_optimizer(f.learning_rate, f.weight_decay, f.iterations)
    root = keys.stage_key(config.seed, "flow")
    state = flow.create_flow_state(model, tx, jax.random.fold_in(root, 0))
    batch_size = min(f.batch_size, weights.shape[0])
    if batch_size < f.batch_size:
        logging.warning(
            "flow: batch size %d exceeds the zoo (%d models); using %d", f.batch_size, weights.shape[0], batch_size
        )
    train_chunk = flow.make_train_chunk(
        model,
        tx,
        batch_size=batch_size,
        source=source,
        sigma=f.sigma,
        time_distribution=f.time_distribution,
        beta=tuple(f.beta),
        target_noise=f.target_noise,
    )
    losses = np.zeros(f.iterations, np.float32)
    stopping = EarlyStopping.start(config, model, source, state.params) if f.early_stopping else None

    def checkpointed(state: flow.FlowState, losses: np.ndarray) -> dict:
        """What a flow checkpoint holds: the training state, the losses so far, the early stopping's state."""
        return {"state": state, "losses": losses} | ({"stopping": stopping.saved()} if stopping else {})

    restored = saves.restore_latest(checkpointed(state, losses))
    if restored is not None:
        state, losses = flow.FlowState(*restored[1]["state"]), restored[1]["losses"]
        if stopping:
            stopping.restore(restored[1]["stopping"])
        logging.info("flow: resuming from step %d", int(state.step))
    train_key = jax.random.fold_in(root, 1)
    bar = tqdm(total=f.iterations, initial=int(state.step), desc="flow", unit="step", disable=not progress)
    start, start_step = time.perf_counter(), int(state.step)
    learning_rate = flow.learning_rate_schedule(f.learning_rate, f.iterations)
    # An error ends the bar's line first; an interrupted run finishes its last save and writes out its curves.
    with bar, saves, Curves(curves, start_step) as curve_writer:
        while int(state.step) < f.iterations:
            step = int(state.step)
            num_steps = min(f.steps_per_dispatch, f.iterations - step, f.checkpoint_every - step % f.checkpoint_every)
            if stopping:
                num_steps = min(num_steps, f.validate_every - step % f.validate_every)
            state, chunk_losses = train_chunk(state, train_key, weights, num_steps, conditions)
            losses[step : step + num_steps] = np.asarray(chunk_losses)
            scalars = flow_scalars(losses[step : step + num_steps], step + num_steps, learning_rate)
            if stopping and stopping.due(step + num_steps):
                scalars["flow/held_out_loss"] = stopping.evaluate(step + num_steps, state.params, held_out)
            curve_writer.log(step + num_steps, scalars)
            if not np.all(np.isfinite(chunk_losses)):
                raise FloatingPointError(
                    f"flow loss became non-finite near step {step + num_steps}: the flow diverged. Lower "
                    f"flow.learning_rate and delete {saves.directory} (states of this rate) to train it again; "
                    "finished stages are kept"
                )
            if int(state.step) % f.checkpoint_every == 0 or int(state.step) == f.iterations:
                saves.save(int(state.step), checkpointed(state, losses))
            bar.update(num_steps)
            bar.set_postfix(loss=f"{float(jnp.mean(chunk_losses)):.3e}")
    steps_run = f.iterations - start_step
    logging.info(
        "flow: %d steps in this run, %.2f ms/step", steps_run, 1e3 * (time.perf_counter() - start) / max(1, steps_run)
    )
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    result = {"params": state.params, "losses": losses, "num_params": np.asarray(num_params)}
    if stopping:
        logging.info("flow: early stopping keeps step %d of %d", stopping.best_step, f.iterations)
        result |= {
            "params": stopping.best_params,
            "held_out_losses": stopping.held_out_losses,
            "best_step": np.asarray(stopping.best_step),
        }
    return result


class EarlyStopping:
    """The held-out models' flow-matching loss every flow.validate_every steps (and at the last), and the
    parameters of the step where it was lowest. Its state is saved with each checkpoint, so a resumed run keeps
    the same best step as an uninterrupted one."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        validation_loss: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
        params: PyTree,
    ) -> None:
        f = config.flow
        self.every, self.iterations = f.validate_every, f.iterations
        self.validation_loss = validation_loss
        self.key = jax.random.fold_in(keys.stage_key(config.seed, "flow"), 2)
        self.held_out_losses = np.full(-(-f.iterations // f.validate_every), np.nan, np.float32)
        self.best_params, self.best_step = jax.device_get(params), 0

    @classmethod
    def start(
        cls, config: ml_collections.ConfigDict, model: flow.VelocityField, source: flow.Source, params: PyTree
    ) -> "EarlyStopping":
        f = config.flow
        validation_loss = flow.make_validation_loss(
            model, source=source, sigma=f.sigma, time_distribution=f.time_distribution, beta=tuple(f.beta)
        )
        return cls(config, validation_loss, params)

    def due(self, step: int) -> bool:
        """Validated steps: every validate_every, and the last."""
        return step % self.every == 0 or step == self.iterations

    def evaluate(self, step: int, params: PyTree, held_out: jax.Array) -> float:
        """Record the held-out loss at `step`; keep a copy of `params` (the next chunk reuses their buffers) if
        it is the lowest so far."""
        loss = float(self.validation_loss(params, self.key, held_out))
        earlier = self.held_out_losses[~np.isnan(self.held_out_losses)]
        self.held_out_losses[-(-step // self.every) - 1] = loss
        if earlier.size == 0 or loss < earlier.min():
            self.best_params, self.best_step = jax.device_get(params), step
        return loss

    def saved(self) -> dict:
        """What a checkpoint keeps of the early stopping, beside the training state."""
        return {
            "held_out_losses": self.held_out_losses,
            "best_params": self.best_params,
            "best_step": np.asarray(self.best_step),
        }

    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint's `saved()`."""
        self.held_out_losses = np.asarray(saved["held_out_losses"])
        self.best_params, self.best_step = saved["best_params"], int(saved["best_step"])


def sample_flow(
    config: ml_collections.ConfigDict,
    flow_params: PyTree,
    dim: int,
    source: flow.Source,
    key: jax.Array,
    count: int,
    progress: bool,
    condition: int | None = None,
    num_conditions: int = 0,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """`count` samples (in the flow's space) from one integration of the flow, from `key`'s source points.

    The one sampler of the pipeline's stage and of `dwf_jax.Generator`, so the same key and count give the same
    bits in both. A conditioned flow samples networks of one `condition`; a support-conditioned flow networks for
    the task of one `support` embedding (condition_dim,), given to every sample.
    """
    s = config.sample
    model = build_flow(config, dim, num_conditions, 0 if support is None else int(np.shape(support)[-1]))

    def velocity(x, t):
        labels = None if condition is None else jnp.full((x.shape[0],), condition, jnp.int32)
        rows = (
            None
            if support is None
            else jnp.broadcast_to(jnp.asarray(support, x.dtype), (x.shape[0], model.condition_dim))
        )
        return model.apply({"params": flow_params}, x, t, train=False, condition=labels, support=rows)

    bar = tqdm(total=s.steps, desc="sampling", unit="ODE step", disable=not progress)
    start = time.perf_counter()
    sample = jax.jit(
        lambda k: flow.sample_ensemble(
            velocity,
            k,
            count,
            dim,
            source=source,
            num_steps=s.steps,
            method=s.method,
            on_step=(lambda _: bar.update(1)) if progress else None,
        )
    )
    with bar:
        samples = np.asarray(sample(key))
    logging.info(
        "sampling: %d models, %d flow evaluations, %.2f s (incl. compile)",
        count,
        flow.num_function_evals(s.method, s.steps),
        time.perf_counter() - start,
    )
    return samples


def sample_stage(
    config: ml_collections.ConfigDict,
    flow_params: PyTree,
    dim: int,
    source: flow.Source,
    progress: bool,
    condition: int | None = None,
    num_conditions: int = 0,
) -> np.ndarray:
    """A conditioned flow's ensemble of one `condition`: `sample.num_samples` models from the condition's own
    noise (the 'sample' stream folded with the condition); without one, the pipeline's ensemble."""
    key = keys.stage_key(config.seed, "sample")
    if condition is not None:
        key = jax.random.fold_in(key, condition)
    return sample_flow(
        config, flow_params, dim, source, key, config.sample.num_samples, progress, condition, num_conditions
    )
