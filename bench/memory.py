r"""Per-device memory and FLOPs of the paper-scale step and evaluation, compile only.

    python bench/memory.py [--models=resnet18,resnet50] [--dtypes=float32,bfloat16]
        [--devices=1,4,8] [--remat=false,true] [--pool_dtype=uint8] [--config=configs/food_cub.py] [--out=x.json]

For each (model, dtype, device count) a fresh subprocess with that many fake CPU devices
(`--xla_force_host_platform_device_count`) builds the shipped pieces of the config
(`train.make_train_step` with `optim.make_optimizer` and `sharding.state_shardings`;
`evaluate.Evaluator`'s probe fit and eval batch) on abstract arguments
(`jax.ShapeDtypeStruct`s: no data, no parameters), compiles them
(`jit(...).lower(...).compile()`) and reads `memory_analysis()` (bytes per device: arguments,
outputs, temporaries; donated arguments aliased to outputs are counted once) and
`cost_analysis()` (FLOPs per device). With --flops (1 device only) it also compiles the
joint step on the same rows (target_batch_size = split train + val) and the backbone alone
(forward + backward over [source; target rows]), for the share of FLOPs outside the backbone.

XLA:CPU decides the layout and fusion here: an accelerator's numbers differ (bf16
convolutions in particular may keep float32 temporaries on CPU), so read the figures as
estimates of what the program asks for, not a device measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30

_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from merlin_jax import train
from merlin_jax.runtime import sharding
from merlin_jax.config_base import load_config, override
from merlin_jax.data.interface import TransferData
from merlin_jax.evaluate import Evaluator
from merlin_jax.methods import Context, get_method
from merlin_jax.models import make_backbone
from merlin_jax.optim import make_optimizer

spec = json.loads({spec!r})
config = override(load_config(spec["config"]), {{"model.name": spec["model"],
                                                "model.dtype": spec["dtype"],
                                                "model.remat": spec["remat"]}})
size, ch = config.data.image_size, config.data.channels
n_src_cls, n_tgt_cls = config.data.num_source_classes, config.data.num_target_classes
n_pool = config.data.target.num_train
mesh = sharding.mesh_from_config(config.mesh)
data_sh, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
sds = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
pool_dtype = jnp.dtype(spec["pool_dtype"])


def mem(compiled):
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes,
              temp=m.temp_size_in_bytes, alias=m.alias_size_in_bytes,
              total=m.argument_size_in_bytes + m.output_size_in_bytes
              - m.alias_size_in_bytes + m.temp_size_in_bytes,
              flops=float(cost.get("flops", float("nan"))))


def step_memory(method_name, overrides):
  cfg = override(config.copy_and_resolve_references(), dict(overrides, method=method_name))
  method = get_method(method_name)
  hp = method.hyper(cfg, n_src_cls, n_tgt_cls)
  ctx = Context(backbone=make_backbone(cfg.model, (1, size, size, ch)), hp=hp)
  example = jnp.zeros((1, size, size, ch), jnp.float32)
  params, model_state = jax.eval_shape(
      lambda: train.init_params(ctx, jax.random.key(0), example))
  optimizer = make_optimizer(cfg.optimizer, cfg.total_steps)
  state = jax.eval_shape(lambda p, s: train.TrainState(
      step=jnp.zeros((), jnp.int32), params=p, model_state=s, opt_state=optimizer.init(p),
      best_val_accuracy=jnp.zeros((), jnp.float32), best_step=jnp.zeros((), jnp.int32)),
      params, model_state)
  st_sh = sharding.state_shardings(mesh, state, cfg.mesh.param_sharding,
                                   cfg.mesh.fsdp_min_size)
  state = jax.tree.map(lambda a, s: sds(a.shape, a.dtype, s), state, st_sh)
  step = train.make_train_step(method, ctx, optimizer, jax.random.key(1), mesh=mesh,
                               state_sharding=st_sh)
  source = {{"inputs": sds((cfg.batch_size, size, size, ch), jnp.float32, data_sh),
            "label": sds((cfg.batch_size,), jnp.int32, data_sh)}}
  pool = {{"inputs": sds((n_pool, size, size, ch), pool_dtype, rep),
          "label": sds((n_pool,), jnp.int32, rep)}}
  t = time.time()
  compiled = step.lower(state, source, pool, None).compile()
  out = mem(compiled)
  out["compile_s"] = time.time() - t
  out["pool_bytes"] = n_pool * size * size * ch * pool_dtype.itemsize
  return out, ctx, state, pool, method, cfg


res = dict(spec, devices=jax.device_count())
split = config.split.train_size + config.split.val_size
res["train"], ctx, state, pool, method, cfg = step_memory(config.method, {{}})
# Evaluation: the probe fit over the whole pool (chunked) and one eval batch.
data = TransferData(source=None, target_train=pool, target_val=pool,
                    num_source_classes=n_src_cls, num_target_classes=n_tgt_cls)
ev = Evaluator(cfg, method, ctx, mesh, data, pool, cfg.seed)
params, mstate = state.params, state.model_state
t = time.time()
res["probe"] = mem(ev._fit_probe.lower(params, mstate, pool).compile())
res["probe"]["compile_s"] = time.time() - t
head = jax.tree.map(lambda a: sds(a.shape, a.dtype, rep), params["target_head"])
b = ev.batch_size
batch = {{"inputs": sds((b, size, size, ch), jnp.float32, data_sh),
         "label": sds((b,), jnp.int32, data_sh), "mask": sds((b,), jnp.float32, data_sh)}}
res["eval_batch"] = mem(ev._batch_stats.lower(head, params, mstate, batch).compile())
res["eval_batch_size"] = b
if spec["flops"]:
  res["joint"] = step_memory("joint", {{"target_batch_size": split}})[0]
  rows = cfg.batch_size + split
  x = sds((rows, size, size, ch), jnp.float32, data_sh)

  def backbone_only(p, s, x):
    def f(p):
      feats, new_s = ctx.backbone.features(p, s, x, train=True)
      return jnp.sum(feats), new_s
    return jax.grad(f, has_aux=True)(p)
  res["backbone"] = mem(jax.jit(backbone_only).lower(params["backbone"], mstate, x).compile())
  res["backbone_rows"] = rows
print("RESULT " + json.dumps(res))
"""


def run_child(spec: dict, timeout: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={spec['n_devices']}")
  script = _CHILD.format(root=ROOT, spec=json.dumps(spec))
  t = time.time()
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT)
  if proc.returncode != 0 or "RESULT " not in proc.stdout:
    return dict(spec, error=proc.stderr.strip().splitlines()[-1:] or ["?"],
                wall_s=time.time() - t)
  res = json.loads(proc.stdout.split("RESULT ", 1)[1])
  res["wall_s"] = time.time() - t
  return res


def fmt_gib(x) -> str:
  return f"{x / GiB:.2f}"


def table(results) -> str:
  lines = ["| model | remat | dtype | devices | train step arg / temp / total GiB | train TFLOP "
           "| probe (whole pool) total GiB | eval batch total GiB | pool on device GiB |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    if "error" in r:
      lines.append(f"| {r['model']} | {r['remat']} | {r['dtype']} | {r['n_devices']} | error: "
                   f"{r['error'][0][:80]} | | | | |")
      continue
    t, p, e = r["train"], r["probe"], r["eval_batch"]
    lines.append(
        f"| {r['model']} | {r['remat']} | {r['dtype']} | {r['devices']} | {fmt_gib(t['args'])} / "
        f"{fmt_gib(t['temp'])} / {fmt_gib(t['total'])} | {t['flops'] / 1e12:.2f} | "
        f"{fmt_gib(p['total'])} | {fmt_gib(e['total'])} | {fmt_gib(t['pool_bytes'])} |")
  return "\n".join(lines)


def flops_table(results) -> str:
  lines = ["| model | remat | dtype | MeRLin step TFLOP | joint step TFLOP | MeRLin / joint "
           "| backbone fwd+bwd TFLOP | MeRLin outside the backbone |",
           "|---|---|---|---|---|---|---|---|"]
  for r in results:
    if "joint" not in r:
      continue
    m, j, b = r["train"]["flops"], r["joint"]["flops"], r["backbone"]["flops"]
    lines.append(f"| {r['model']} | {r['remat']} | {r['dtype']} | {m / 1e12:.3f} | {j / 1e12:.3f} | "
                 f"{m / j:.3f} | {b / 1e12:.3f} | {100 * (1 - b / m):.2f}% |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/food_cub.py")
  ap.add_argument("--models", default="resnet18,resnet50")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--devices", default="1,4,8")
  ap.add_argument("--remat", default="false", help="model.remat values: false,true")
  ap.add_argument("--pool_dtype", default="uint8", help="the target pool's dtype on device")
  ap.add_argument("--no_flops", action="store_true", help="skip the joint / backbone compiles")
  ap.add_argument("--timeout", type=int, default=1800)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  print(f"# python bench/memory.py {' '.join(sys.argv[1:])}  "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}  "
        f"{platform.node()} {os.cpu_count()} CPUs  (compile only, fake CPU devices)",
        flush=True)
  results = []
  for model in args.models.split(","):
    for remat in (v.strip().lower() in ("true", "1") for v in args.remat.split(",")):
      for dtype in args.dtypes.split(","):
        for n in map(int, args.devices.split(",")):
          spec = dict(config=args.config, model=model, dtype=dtype, n_devices=n, remat=remat,
                      pool_dtype=args.pool_dtype, flops=(n == 1 and not args.no_flops))
          r = run_child(spec, args.timeout)
          results.append(r)
          print(json.dumps(r), flush=True)
  print()
  print(table(results))
  print()
  print(flops_table(results))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
