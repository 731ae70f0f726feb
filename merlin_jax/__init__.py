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

# XLA:CPU's experimental YNNPACK fusions make this codebase's convolution steps ~25% slower
# on CPU (bench/step.py, 2026-11-23: joint step 123 -> 90 ms, MeRLin n=5 127 -> 91 ms, same
# numbers of the same maths). XLA reads XLA_FLAGS when the backend starts (the first device
# use), so setting it at import is enough; it only concerns the CPU backend. A flag the user
# set wins; MERLIN_JAX_XLA_DEFAULTS=1 keeps XLA's own defaults.
_YNN = "--xla_cpu_experimental_ynn_fusion_type"
if os.environ.get("MERLIN_JAX_XLA_DEFAULTS") != "1" and _YNN not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN}=".strip()
