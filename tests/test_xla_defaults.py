"""The XLA:CPU default `import merlin_jax` sets (merlin_jax/__init__.py, issue 32).

YNNPACK takes the CPU program's reductions (the bias gradients, ~7% of the BENCH.md step);
a flag the user set wins, MERLIN_JAX_XLA_DEFAULTS=1 keeps XLA's own. The flag is read when
the backend starts, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN = "--xla_cpu_experimental_ynn_fusion_type"

_FLAGS = "import os, merlin_jax; print(os.environ.get('XLA_FLAGS', ''))"

# The small CNN's gradient with YNNPACK's reductions (this process's default) against the
# same program compiled with every YNNPACK fusion off, both float32; and whether the
# compiled program really hands its reductions to YNNPACK.
_GRAD = r"""
import json
import merlin_jax
import jax, jax.numpy as jnp
from merlin_jax.models.cnn import SmallCNN
m = SmallCNN(conv_batch_chunk=20)
x = jax.random.normal(jax.random.key(0), (50, 28, 28, 1))
p = m.init(jax.random.key(1), x)
loss = lambda p: jnp.sum(jnp.tanh(m.apply(p, x)) * jnp.arange(256.0) / 256)
g = jax.jit(jax.grad(loss))
ynn = g.lower(p).compile()
off = g.lower(p).compile(compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})
a, b = ynn(p), off(p)
err = max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
          for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
bias = [float(jnp.max(jnp.abs(a["params"][conv]["bias"]))) for conv in ("Conv_0", "Conv_1")]
print(json.dumps({"err": err, "bias": bias, "ynn": "ynn_fusion" in ynn.as_text(),
                  "off_ynn": "ynn_fusion" in off.as_text()}))
"""


def _run(code: str, **env) -> str:
  e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MERLIN_JAX_XLA_DEFAULTS")}
  e.update(env, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def test_import_sets_ynn_reductions_only_and_the_users_flag_wins():
  assert _run(_FLAGS) == f"{YNN}=LIBRARY_FUSION_TYPE_REDUCE"
  assert _run(_FLAGS, XLA_FLAGS="--xla_cpu_enable_fast_math=false") == (
      f"--xla_cpu_enable_fast_math=false {YNN}=LIBRARY_FUSION_TYPE_REDUCE")
  assert _run(_FLAGS, XLA_FLAGS=f"{YNN}=") == f"{YNN}="
  assert _run(_FLAGS, MERLIN_JAX_XLA_DEFAULTS="1") == ""


def test_ynn_reductions_give_the_same_gradient():
  r = json.loads(_run(_GRAD))
  assert r["ynn"] and not r["off_ynn"], r    # the default really uses YNNPACK, "" does not
  assert min(r["bias"]) > 0, r               # the bias gradients (its reductions) are live
  assert r["err"] < 1e-5, r                  # float32 rounding only
