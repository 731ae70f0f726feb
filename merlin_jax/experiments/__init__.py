"""Small, self-contained experiments (simulations) built on the merlin_jax library."""
