"""autoscale_jax: compute-optimal pre-training data mixtures (AutoScale) in JAX/Flax."""
