"""Generate weights by integrating the learned velocity field from noise (one lax.scan)."""

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from dwf_jax.flow.source import Source, draw
from dwf_jax.sharding import gathered, mesh_size, over_models, pad_models, padded_count

Velocity = Callable[[jax.Array, jax.Array], jax.Array]
_STAGES = {"rk4": 4, "euler": 1}
ODE_METHODS = tuple(_STAGES)


def num_function_evals(method: str, num_steps: int) -> int:
    """Exact number of velocity evaluations `integrate` makes."""
    if method not in _STAGES:
        raise ValueError(f"unknown ODE method {method!r}; choose {sorted(_STAGES)}")
    return _STAGES[method] * num_steps


def time_field(velocity: Velocity) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """field(x, t) with one scalar time t: `velocity` at t for every row, each device integrating its rows."""
    velocity_per_device = over_models(velocity, num_sharded=2)

    def field(x: jax.Array, t: jax.Array) -> jax.Array:
        return velocity_per_device(x, jnp.full((x.shape[0],), t, x.dtype))

    return field


def ode_step(
    field: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, t: jax.Array, dt: float, method: str
) -> jax.Array:
    """One Euler or classical RK4 step of dx/dt = field(x, t) from time t: the step formula of `integrate`, shared
    with `dwf_jax.flow.finetune.integrate_detached` so that its forward values are the sampler's, bit for bit."""
    if method == "euler":
        return x + dt * field(x, t)
    k1 = field(x, t)
    k2 = field(x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = field(x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = field(x + dt * k3, t + dt)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def integrate(
    velocity: Velocity,
    x0: jax.Array,
    num_steps: int,
    method: str = "rk4",
    on_step: Callable[[jax.Array], None] | None = None,
) -> jax.Array:
    """Integrate dx/dt = v(x, t) from t=0 to t=1 in `num_steps` equal steps.

    `on_step(i)` runs on host after each step (a progress bar), via jax.debug.callback.
    """
    num_function_evals(method, num_steps)
    chex.assert_rank(x0, 2)  # (models, dim)
    dt = 1.0 / num_steps
    num_models = x0.shape[0]
    x0 = pad_models(x0, padded_count(num_models, mesh_size()))  # under a mesh, each device integrates its rows
    field = time_field(velocity)

    def scan_step(x, i):
        x = ode_step(field, x, i.astype(x0.dtype) * dt, dt, method)
        if on_step is not None:
            jax.debug.callback(on_step, i)
        return x, None

    x1, _ = jax.lax.scan(scan_step, x0, jnp.arange(num_steps))
    return gathered(x1[:num_models])


def sample_ensemble(
    velocity: Velocity,
    key: jax.Array,
    num_samples: int,
    dim: int,
    *,
    source: Source,
    num_steps: int,
    method: str,
    on_step: Callable[[jax.Array], None] | None = None,
) -> jax.Array:
    """(num_samples, dim) generated weight vectors, the whole ensemble in one integration."""
    x0 = draw(source, key, (num_samples, dim))
    return integrate(velocity, x0, num_steps, method, on_step)
