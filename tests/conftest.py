"""Test-wide settings: float32 matrix products at full precision on every backend.

GPUs multiply float32 in TF32 by default (about 1e-3 relative error), which is
right for training but hides what the tests check: functional equivalence after
permutation to 1e-5, streamed and in-memory results equal to 1e-5.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
