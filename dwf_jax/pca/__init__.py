"""PCA of a flattened zoo: dual (in memory or streamed in column blocks) and incremental.

`fit_transform` is what the pipeline calls with `config.pca.method` on any zoo store
(in memory or a file): the PCA state and the zoo's coefficients, the components
optionally written to a file. `transform_streaming` / `inverse_transform_to_file` map
zoos that do not fit in memory to and from coefficients (`inverse_transform_blocks`: the same blocks in memory).
"""

import os

import jax
import numpy as np

from dwf_jax.pca.dual import PCAState, fit_dual, inverse_transform, randomized_top_eigenpairs, top_eigenpairs, transform
from dwf_jax.pca.incremental import DEFAULT_BATCH_SIZE, IncrementalState, first_fit, fit_incremental, partial_fit
from dwf_jax.pca.streaming import (
    SOLVERS,
    fit_transform_dual_streaming,
    inverse_transform_blocks,
    inverse_transform_to_file,
    transform_streaming,
)
from dwf_jax.zoo_store import ZooStore, groups, write_rows

METHODS = ("none", "dual", "incremental")

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "METHODS",
    "SOLVERS",
    "IncrementalState",
    "PCAState",
    "first_fit",
    "fit_dual",
    "fit_incremental",
    "fit_transform",
    "fit_transform_dual_streaming",
    "inverse_transform",
    "inverse_transform_blocks",
    "inverse_transform_to_file",
    "partial_fit",
    "randomized_top_eigenpairs",
    "top_eigenpairs",
    "transform",
    "transform_streaming",
]


def fit_transform(
    method: str,
    zoo: ZooStore,
    num_components: int,
    micro_batch: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fp16: bool = False,
    solver: str = "eigh",
    key: jax.Array | None = None,
    components_path: str | os.PathLike | None = None,
) -> tuple[PCAState, np.ndarray]:
    """The PCA named by `config.pca.method` of a zoo store, and the zoo's (N, k) coefficients.

    Both methods read the zoo a piece at a time: dual in blocks of `micro_batch` columns,
    incremental in groups of `batch_size` models (its coefficients by a streamed projection).
    With `components_path` the (k, D) components are a raw float32 file (a read-only memmap).
    """
    if method == "dual":
        return fit_transform_dual_streaming(
            zoo.columns, zoo.num_models, zoo.dim, num_components, micro_batch, fp16, solver, key, components_path
        )
    if method == "incremental":
        state = PCAState(*map(np.asarray, fit_incremental(groups(zoo, batch_size), num_components, batch_size)))
        if components_path is not None:
            state = state._replace(components=write_rows(components_path, state.components).as_array())
        return state, transform_streaming(state, zoo.columns, zoo.num_models, zoo.dim, micro_batch)
    raise ValueError(f"unknown PCA method {method!r}; choose one of {[m for m in METHODS if m != 'none']}")
