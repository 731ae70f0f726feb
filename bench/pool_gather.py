r"""How reading rows of the on-device target pool costs memory on the TPU compiler.

    python bench/pool_gather.py [--target=v5e:1] [--rows=4994] [--size=224]

One small program per way of reading rows from a replicated uint8 pool [rows, size, size,
3] (the food_cub pool) is compiled for `--target` (compile_check's targets; libtpu, no TPU
attached) and its temporaries printed: chunks of 16 rows by an index array (the old probe)
or by contiguous `lax.dynamic_slice` (evaluate.chunked_features), and 512 random rows by an
index array (the old MeRLin split) or one `dynamic_index` per row (methods.base.
take_from_pool). Each chunk feeds one bf16 3x3 convolution, so the rows are really used.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from merlin_jax import compile_check  # noqa: E402
from merlin_jax.runtime import sharding
from merlin_jax.methods.base import take_from_pool  # noqa: E402

_TARGET = flags.DEFINE_string("target", "v5e:1", "compile_check target.")
_ROWS = flags.DEFINE_integer("rows", 4994, "Pool rows.")
_SIZE = flags.DEFINE_integer("size", 224, "Image side.")
CHUNK, SAMPLE = 16, 512


def main(argv):
  del argv
  devices = compile_check.target_devices(compile_check.parse_target(_TARGET.value))
  mesh = sharding.make_mesh(1, 1, devices[:1])
  rep = sharding.replicated(mesh)
  n, s = _ROWS.value, _SIZE.value
  pool = jax.ShapeDtypeStruct((n, s, s, 3), jnp.uint8, sharding=rep)
  w = jax.ShapeDtypeStruct((3, 3, 3, 64), jnp.bfloat16, sharding=rep)

  def feats(x, w):
    x = x.astype(jnp.bfloat16) / 255
    y = jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.mean((1, 2))

  n_chunks = -(-n // CHUNK)
  ways = {
      "16-row chunks by index array": lambda p, w, k: jax.lax.map(
          lambda rows: feats(p[rows], w),
          jnp.minimum(jnp.arange(n_chunks * CHUNK), n - 1).reshape(n_chunks, CHUNK)),
      "16-row chunks by dynamic_slice": lambda p, w, k: jax.lax.map(
          lambda i: feats(jax.lax.dynamic_slice_in_dim(p, i, CHUNK), w),
          jnp.minimum(jnp.arange(n_chunks) * CHUNK, n - CHUNK)),
      f"{SAMPLE} random rows by index array": lambda p, w, k: feats(
          p[jax.random.permutation(k, n)[:SAMPLE]], w),
      f"{SAMPLE} random rows, take_from_pool": lambda p, w, k: feats(
          take_from_pool(p, jax.random.permutation(k, n)[:SAMPLE]), w),
  }
  print(f"| how rows are read ({_TARGET.value}, pool {n} x {s} x {s} x 3 uint8) | arguments GiB "
        "| temporaries GiB |\n|---|---|---|")
  for name, f in ways.items():
    c = jax.jit(lambda p, w, k: f(p, w, k).sum()).lower(pool, w, jax.random.key(0)).compile()
    m = c.memory_analysis()
    print(f"| {name} | {m.argument_size_in_bytes / 2**30:.3f} | "
          f"{m.temp_size_in_bytes / 2**30:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
