"""The run machinery: workdir, checkpointing, preemption, provenance, fs, metrics, sharding,
distributed (moved here from the top level of merlin_jax)."""
