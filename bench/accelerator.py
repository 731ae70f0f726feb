r"""The shipped MeRLin (n = 5, 50) and joint steps, timed on the accelerator this host has.

    python bench/accelerator.py [--out=accelerator.json]   # a GPU or TPU host: < 8 min
    python bench/accelerator.py --smoke                    # any CPU: tiny shapes, seconds

Prepared for the day an accelerator is lent. For joint, MeRLin n=5 and MeRLin n=50 (the
config's method with inner.kind=gd and inner.steps=n; joint with target_batch_size = the
split's train + val rows, so both see the same rows per step) it builds the run of
`--config` (default configs/food_cub.py: ResNet-18, bfloat16, 224 px, source batch 256,
split 256 + 256, a 4,994-image uint8 target pool) over all local devices with
`merlin_jax.compile_check.build` -- the same builder the compile-only check uses -- fills
it with synthetic data (uniform pixels, uniform labels; no data is read), and times the
shipped jitted `train.make_train_step`:

  step ms      median of --steps steps after --warmup (state donated, as in a run;
               `block_until_ready` on the new state);
  / joint      the step time over joint's, same process;
  MFU          FLOPs per device per step (the compiled step's cost_analysis; XLA counts a
               loop body once, so MeRLin's inner loop is under-counted: a lower bound)
               over step time x the chip's peak bf16 FLOP/s (compile_check.CHIPS/GPUS);
  peak GiB     the runtime's `device.memory_stats()['peak_bytes_in_use']` after the
               variant ran (a running peak: variants run in the order above, and the
               previous one's buffers are freed before the next starts);
  predicted    what the compile-only check predicts for the same program on this device:
               arguments + outputs - aliases + temporaries of the very executable timed.

--smoke: a tiny shape (SmallCNN, 16 px, batch 8, pool 16, 2 timed steps) on whatever
devices there are (CPU here): the same code path, for the test.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from merlin_jax import compile_check  # noqa: E402
from merlin_jax.config_base import load_config, override  # noqa: E402

GiB = 2**30

_CONFIG = flags.DEFINE_string("config", "configs/food_cub.py", "The config whose shapes to use.")
_SIZES = flags.DEFINE_list("sizes", ["5", "50"], "MeRLin inner steps n.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per variant (after compiling).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes, 2 timed steps: runs on a CPU.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")

SMOKE = {"model.name": "small_cnn", "model.batch_norm": True, "data.image_size": 16,
         "batch_size": 8, "split.train_size": 4, "split.val_size": 4,
         "data.target.num_train": 16, "eval.batch_size": 8}


def variants(config, sizes):
  """[(name, method, overrides)]: joint first (the ratios' base), then MeRLin by n."""
  split = config.split.train_size + config.split.val_size
  out = [("joint", "joint", {"target_batch_size": split})]
  for n in sizes:
    out.append((f"merlin_n{n}", "merlin", {"inner.kind": "gd", "inner.steps": int(n)}))
  return out


def synthetic(abstract, seed: int):
  """Concrete arrays with the shapes, dtypes and shardings of an abstract batch."""
  rng = np.random.default_rng(seed)

  def fill(a):
    if a.dtype == jnp.uint8:
      x = rng.integers(0, 256, a.shape, dtype=np.uint8)
    elif jnp.issubdtype(a.dtype, jnp.integer):   # labels (the only integers of an image batch)
      x = rng.integers(0, 2, a.shape).astype(a.dtype)
    else:
      x = rng.random(a.shape, dtype=np.float32).astype(a.dtype)
    return jax.device_put(x, a.sharding)
  return jax.tree.map(fill, abstract)


def peak_bytes(devices) -> int | None:
  stats = [d.memory_stats() for d in devices]
  if any(s is None or "peak_bytes_in_use" not in s for s in stats):
    return None   # CPU: the runtime keeps no such statistics
  return max(s["peak_bytes_in_use"] for s in stats)


def time_variant(config, name, method, overrides, steps, warmup):
  run = compile_check.build(config, jax.devices(), method, overrides)
  n_cls = run.config.data.num_target_classes
  state = jax.jit(run.init_state, out_shardings=run.state_sharding)()
  source = synthetic(run.source, 1) if run.source is not None else None
  pool = synthetic(run.pool, 2)
  pool["label"] = jax.device_put(np.arange(pool["label"].shape[0]) % n_cls,
                                 run.pool["label"].sharding)   # every class present
  anchor = None if run.anchor is None else jax.tree.map(jnp.copy, state.params["backbone"])
  t = time.time()
  compiled = run.train_step.lower(state, source, pool, anchor).compile()
  compile_s = time.time() - t
  program = compile_check.program(name, compiled, compile_s)   # the executable timed
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    state, metrics = compiled(state, source, pool, anchor)
    jax.block_until_ready(state)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  loss = float(metrics["loss"])
  chip = compile_check.chip_for_device(jax.devices()[0])
  step_s = statistics.median(times)
  res = {"name": name, "step_ms": 1e3 * step_s, "compile_s": compile_s,
         "flops_per_device": program.flops, "loss": loss,
         "mfu": program.flops / (step_s * chip.peak_bf16_flops) if chip else None,
         "peak_gib": (lambda b: None if b is None else b / GiB)(peak_bytes(jax.devices())),
         "predicted_gib": program.total / GiB, "convolutions": program.convs}
  del state, source, pool, anchor, metrics
  return res


def main(argv):
  del argv
  config = load_config(_CONFIG.value)
  config.model.dtype = "bfloat16"
  if _SMOKE.value:
    override(config, SMOKE)
  steps, warmup = (2, 1) if _SMOKE.value else (_STEPS.value, _WARMUP.value)
  dev = jax.devices()[0]
  chip = compile_check.chip_for_device(dev)
  print(f"# python bench/accelerator.py {' '.join(sys.argv[1:])}  "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}  "
        f"{platform.node()}: {len(jax.devices())} x {dev.device_kind}, jax {jax.__version__}; "
        f"peak {'unknown' if chip is None else f'{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 ({chip.source})'}",
        flush=True)
  results = []
  for name, method, overrides in variants(config, _SIZES.value):
    t = time.time()
    r = time_variant(config, name, method, overrides, steps, warmup)
    r["wall_s"] = time.time() - t
    results.append(r)
    print(json.dumps(r), flush=True)
  joint = results[0]["step_ms"]
  fmt = lambda x, f: "n/a" if x is None else format(x, f)
  print("\n| step | step ms | / joint | MFU | runtime peak GiB | predicted GiB | compile s |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['name']} | {r['step_ms']:.1f} | {r['step_ms'] / joint:.2f} | "
          f"{fmt(r['mfu'], '.1%')} | {fmt(r['peak_gib'], '.2f')} | {r['predicted_gib']:.2f} | "
          f"{r['compile_s']:.0f} |")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"argv": sys.argv, "device_kind": dev.device_kind, "results": results}, f,
                indent=1)


if __name__ == "__main__":
  app.run(main)
