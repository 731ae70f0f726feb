r"""Per-device memory and FLOPs of the paper-scale step, probe and eval, compile only.

    python bench/memory.py --targets=v5e:1,v5e:2x4 [--models=resnet18,resnet50]
        [--dtypes=bfloat16] [--param_sharding=replicated,fsdp] [--remat=false]
        [--config=configs/food_cub.py] [--set=key=value,...] [--flops] [--out=x.json]
    python bench/memory.py --targets=cpu:1,cpu:8 ...        # fake CPU devices (XLA:CPU)

For each (model, dtype, remat, param sharding, target) a fresh subprocess compiles the
config's train step, probe and eval batch with `merlin_jax.compile_check.check` -- what
`python -m merlin_jax.main --compile_only=TARGET` runs for a user -- on abstract arguments
against the target's devices:

  TPU topologies (v5e:2x2, v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x2, v5e:4x4 multi-host, ...;
      GENERATION:1 = one chip) are compiled by libtpu with no TPU attached (the tpu extra);
  cpu:N is N fake CPU devices (`--xla_force_host_platform_device_count`): XLA:CPU decides
      layout and fusion (bf16 convolutions become float32 there), so read those figures as
      estimates of what the program asks for, not a device's.

Printed per row: the program's bytes per device (arguments + outputs - donated aliases +
temporaries) and the peak with the run's resident buffers (compile_check's docstring), the
chip's HBM, FLOPs per device per step and the step-time lower bound at the chip's peak
bf16 FLOP/s (compile_check.CHIPS, with the source of each figure), bf16/f32 spatial
convolutions, compile seconds. --flops also compiles the joint step on the same rows
(target_batch_size = split train + val) for the MeRLin / joint FLOP ratio.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30

_CONFIG = flags.DEFINE_string("config", "configs/food_cub.py", "The config to compile.")
_TARGETS = flags.DEFINE_list("targets", ["v5e:1", "v5e:2x4"],
                             "TPU topologies (v5e:2x4, GENERATION:1 = one chip) or cpu:N.")
_MODELS = flags.DEFINE_list("models", ["resnet18", "resnet50"], "model.name values ('' = the "
                            "config's).")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16"], "model.dtype values.")
_PARAM = flags.DEFINE_list("param_sharding", ["replicated"], "mesh.param_sharding values.")
_REMAT = flags.DEFINE_list("remat", ["false"], "model.remat values.")
_SET = flags.DEFINE_list("set", [], "Further config overrides key=value (e.g. eval.batch_size=64).")
_PROGRAMS = flags.DEFINE_list("programs", ["train_step", "probe", "eval_batch"],
                              "Which programs to compile.")
_FLOPS = flags.DEFINE_bool("flops", False, "Also compile the joint step (FLOP ratio).")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds per row.")
_OUT = flags.DEFINE_string("out", "", "Write the rows as JSON here.")

_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
from merlin_jax import compile_check
from merlin_jax.config_base import load_config
spec = json.loads({spec!r})
config = load_config(spec["config"])
res = {{"report": compile_check.check(config, spec["target"], programs=spec["programs"],
                                      overrides=spec["overrides"], stop_early=False).to_dict()}}
if spec["flops"]:
  split = config.split.train_size + config.split.val_size
  res["joint"] = compile_check.check(
      config, spec["target"], programs=("train_step",), method_name="joint",
      overrides=dict(spec["overrides"], target_batch_size=split)).to_dict()
print("RESULT " + json.dumps(res))
"""


def run_child(spec: dict, timeout: int) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  if spec["target"].startswith("cpu:"):
    n = int(spec["target"].split(":")[1])
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  script = _CHILD.format(root=ROOT, spec=json.dumps(spec))
  t = time.time()
  try:
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return dict(spec, error=[f"timeout after {timeout} s"], wall_s=time.time() - t)
  if proc.returncode != 0 or "RESULT " not in proc.stdout:
    return dict(spec, error=proc.stderr.strip().splitlines()[-1:] or ["?"],
                wall_s=time.time() - t)
  res = dict(spec, **json.loads(proc.stdout.split("RESULT ", 1)[1]))
  res["wall_s"] = time.time() - t
  return res


def _gib(x) -> str:
  return f"{x / GiB:.2f}"


def table(rows) -> str:
  lines = ["| model | dtype | remat | params | target (mesh) | train step program / peak GiB "
           "| probe program / peak GiB | eval batch program / peak GiB | HBM GiB | TFLOP/step "
           "| step >= ms | convs bf16/f32 (step) | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    head = (f"| {r['model'] or '-'} | {r['dtype']} | {r['remat']} | {r['param_sharding']} | "
            f"{r['target']}")
    if "error" in r:
      lines.append(f"{head} | error: {r['error'][0][:120]} | | | | | | | |")
      continue
    rep = r["report"]
    progs = rep["programs"]
    cell = lambda k: (f"{_gib(progs[k]['total'])} / {_gib(progs[k]['peak'])}" if k in progs
                      else "-")
    mesh = "x".join(str(v) for v in rep["mesh"].values())
    step = progs.get("train_step")   # absent with --programs=probe,eval_batch
    bound = rep["step_time_lower_bound_s"]
    tflop = f"{step['flops'] / 1e12:.3f}" if step else "-"
    convs = f"{step['convs'].get('bf16', 0)}/{step['convs'].get('f32', 0)}" if step else "-"
    lines.append(
        f"{head} ({mesh}) | {cell('train_step')} | {cell('probe')} | {cell('eval_batch')} | "
        f"{_gib(rep['hbm_bytes']) if rep['hbm_bytes'] else '-'} | {tflop} | "
        f"{'-' if bound is None else f'{1e3 * bound:.1f}'} | {convs} | "
        f"{' + '.join(format(p['compile_s'], '.0f') for p in progs.values())} |")
  return "\n".join(lines)


def flops_table(rows) -> str:
  lines = ["| model | dtype | target | MeRLin step TFLOP | joint step TFLOP | MeRLin / joint |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    if "joint" not in r:
      continue
    m = r["report"]["programs"]["train_step"]["flops"]
    j = r["joint"]["programs"]["train_step"]["flops"]
    lines.append(f"| {r['model']} | {r['dtype']} | {r['target']} | {m / 1e12:.3f} | "
                 f"{j / 1e12:.3f} | {m / j:.3f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  from merlin_jax import compile_check
  print(f"# python bench/memory.py {' '.join(sys.argv[1:])}  "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}  "
        f"{platform.node()} {os.cpu_count()} CPUs  libtpu {compile_check.libtpu_version()}",
        flush=True)
  extra = dict(kv.split("=", 1) for kv in _SET.value)
  rows = []
  for model in _MODELS.value or [""]:
    for dtype in _DTYPES.value:
      for remat in _REMAT.value:
        for mode in _PARAM.value:
          for target in _TARGETS.value:
            overrides = dict(extra, **{"model.dtype": dtype, "mesh.param_sharding": mode,
                                       "model.remat": remat.lower() in ("true", "1")})
            if model:
              overrides["model.name"] = model
            spec = dict(config=_CONFIG.value, target=target, model=model, dtype=dtype,
                        remat=remat, param_sharding=mode, overrides=overrides,
                        flops=_FLOPS.value, programs=_PROGRAMS.value)
            r = run_child(spec, _TIMEOUT.value)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if _OUT.value:   # after every row: a long sweep keeps what it has
              with open(_OUT.value, "w") as f:
                json.dump(rows, f, indent=1)
  print()
  print(table(rows))
  if _FLOPS.value:
    print()
    print(flops_table(rows))


if __name__ == "__main__":
  app.run(main)
