"""Conditional flow matching on the straight path from the source (Gaussian noise by default) to weights."""

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from dwf_jax.flow.source import Source, draw

Velocity = Callable[[jax.Array, jax.Array], jax.Array]
TIME_DISTRIBUTIONS = ("uniform", "beta")


def sample_time(key: jax.Array, batch: int, distribution: str, beta: tuple[float, float]) -> jax.Array:
    """t ~ U(0, 1), or Beta(a, b) to spend more steps near the noise end (the BERT setting)."""
    if distribution == "uniform":
        return jax.random.uniform(key, (batch,))
    if distribution == "beta":
        return jax.random.beta(key, beta[0], beta[1], (batch,))
    raise ValueError(f"unknown time distribution {distribution!r}; choose one of {list(TIME_DISTRIBUTIONS)}")


def flow_matching_loss(
    velocity: Velocity,
    key: jax.Array,
    x1: jax.Array,
    *,
    source: Source,
    sigma: float,
    time_distribution: str = "uniform",
    beta: tuple[float, float] = (2.0, 5.0),
) -> jax.Array:
    """MSE between v(x_t, t) and x1 - x0, with x_t = (1-t) x0 + t x1 + sigma * eps."""
    chex.assert_rank(x1, 2)  # (batch, dim): one flattened model per row
    key_x0, key_t, key_eps = jax.random.split(key, 3)
    x0 = draw(source, key_x0, x1.shape, x1.dtype)
    t = sample_time(key_t, x1.shape[0], time_distribution, beta)
    eps = jax.random.normal(key_eps, x1.shape, x1.dtype)
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * x1 + sigma * eps
    return jnp.mean((velocity(x_t, t) - (x1 - x0)) ** 2)
