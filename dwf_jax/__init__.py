"""dwf_jax: DeepWeightFlow (re-basined flow matching for network weights) in JAX.

`dwf_jax.Generator` draws new networks from a finished run. It is imported on first use: importing the package
stays light, so `python -m dwf_jax.main` routes Ctrl-C before jax starts its threads.
"""

from typing import Any

__all__ = ["Generator"]


def __getattr__(name: str) -> Any:
    if name == "Generator":
        from dwf_jax.generator import Generator

        return Generator
    raise AttributeError(f"module 'dwf_jax' has no attribute {name!r}")
