"""merlin_jax: Meta Representation Learning (MeRLin, Liu et al., arXiv 2011.01418) in JAX/Flax."""

__version__ = "0.1.0"
