"""PCA of a flattened zoo: dual (in memory or streamed from disk) and incremental.

`fit` is what the pipeline calls with `config.pca.method` on an in-memory (N, D) zoo;
`fit_transform_dual_streaming` (the state and the zoo's coefficients) and `fit_incremental`
also take zoos that do not fit in memory, and `transform_streaming` / `inverse_transform_to_file`
map such zoos to and from coefficients.
"""

import jax
import jax.numpy as jnp

from dwf_jax.pca.dual import PCAState, fit_dual, inverse_transform, randomized_top_eigenpairs, top_eigenpairs, transform
from dwf_jax.pca.incremental import DEFAULT_BATCH_SIZE, IncrementalState, first_fit, fit_incremental, partial_fit
from dwf_jax.pca.streaming import (
    SOLVERS, array_reader, fit_transform_dual_streaming, inverse_transform_to_file, memmap_reader, transform_streaming, write_memmap,
)

__all__ = [
    "DEFAULT_BATCH_SIZE", "SOLVERS", "IncrementalState", "PCAState", "array_reader", "first_fit", "fit", "fit_dual",
    "fit_incremental", "fit_transform_dual_streaming", "inverse_transform", "inverse_transform_to_file", "memmap_reader", "partial_fit", "randomized_top_eigenpairs",
    "top_eigenpairs", "transform", "transform_streaming", "write_memmap",
]


def fit(
    method: str,
    weights: jax.Array,
    num_components: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    micro_batch: int = 0,
    fp16: bool = False,
    solver: str = "eigh",
    key: jax.Array | None = None,
) -> PCAState:
    """The PCA named by `config.pca.method` on an in-memory (N, D) zoo, as jax arrays.

    dual with micro_batch > 0, fp16 or the randomized solver streams column blocks of the
    zoo, so device memory is set by the block instead of N x D; batch_size is incremental's.
    """
    if method == "dual" and (micro_batch, fp16, solver) == (0, False, "eigh"):
        return fit_dual(weights, num_components)
    if method == "dual":
        num_models, dim = weights.shape
        state, _ = fit_transform_dual_streaming(array_reader(weights), num_models, dim, num_components, micro_batch or dim, fp16, solver, key)
        return PCAState(*map(jnp.asarray, state))
    if method == "incremental":
        return fit_incremental(weights, num_components, batch_size)
    raise ValueError(f"unknown PCA method {method!r}")
