"""merlin_jax: Meta Representation Learning (MeRLin, Liu et al., arXiv 2011.01418) in JAX/Flax."""

import os

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy: `import merlin_jax` stays light (no JAX/TF) so `python -m merlin_jax.main --help`
  # is fast; `merlin_jax.load` imports the model code on first use.
  if name in ("load", "Model"):
    from merlin_jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'merlin_jax' has no attribute {name!r}")

# XLA:CPU's experimental YNNPACK fusions: this codebase runs fastest on CPU with YNNPACK for
# reductions only. XLA's default also hands it every convolution and some dots, which made
# the BENCH.md step ~25% slower on 2026-11-23 (so 74b1b5e turned them all off); since the
# max-pool rewrite and the batch slices the defaults are level with "off", and YNNPACK's
# reductions alone are ~7% faster than either (the bias gradients: XLA's own column reduce
# is a reduce-window per 32 images; bench/step.py, 2026-12-05, WORKSPACE.md issue 32).
# Its dot and elementwise fusion types crashed (SIGSEGV in a YNNPACK dot kernel) on this
# AVX-512 CPU, so they stay off. XLA reads XLA_FLAGS when the backend starts (the first
# device use), so setting it at import is enough; it only concerns the CPU backend. A flag
# the user set wins; MERLIN_JAX_XLA_DEFAULTS=1 keeps XLA's own defaults.
_YNN = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_REDUCE"
if os.environ.get("MERLIN_JAX_XLA_DEFAULTS") != "1" and _YNN not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN}={YNN_FUSION_TYPES}".strip()
