"""dwf_jax: DeepWeightFlow (re-basined flow matching for network weights) in JAX."""
