"""The reference outer step of ../shared/notes/BENCH.md, built from the library, timed.

    python bench/step.py [--quick] [--out=results.json] [--skip_rss] [--sizes=5,50,200]
    python bench/step.py --peer [--rounds=3] [--configs=merlin_n200_so,...]   # vs PyTorch

What it measures, for every configuration (joint; MeRLin n = 5, 50, 200 second order with
and without remat; first order):
  * step ms   median wall time of `--steps` (20) jitted outer steps after `--warmup` (3),
              each step = the shipped `train.make_train_step` (objective, grad, the
              `optim.make_optimizer` sgd 0.01 update, state donated),
              `block_until_ready` on the new state. All configurations are timed
              round-robin (one step of each in turn) in ONE process so their ratios are
              comparable; ratio is to joint from the same round-robin.
  * CPU ms    process CPU time (all threads, time.process_time) per step, median: less
              sensitive than wall time to other processes sharing the cores.
  * compile s `jit(...).lower(...).compile()` wall time, in the round-robin process.
  * XLA mem   `compiled.memory_analysis()`: temp / argument / output bytes of the step
              alone (no Python/JAX baseline).
  * peak RSS  `getrusage(RUSAGE_SELF).ru_maxrss` of a fresh subprocess that builds,
              compiles and runs only that configuration (plus its baseline RSS before
              compiling, and its own fresh-process compile time).

The work (BENCH.md): SmallCNN conv(32,64) dense 256 via `models.make_backbone`; synthetic
N(0,1) 28x28x1 images, uniform labels over 10 classes; source batch 128; a fixed 200-image
target set; MeRLin resamples a 100/100 split per step, zero-initialised head, n GD steps of
0.1, rho 1.0; joint alpha 0.5 with a learned target head over all 200. float32, default XLA
CPU threading (the whole machine).

Initialisation (`--init`, BENCH.md leaves it open): `torch` (default) draws every kernel and
bias of ours from PyTorch's defaults for the same layers, U(+-1/sqrt(fan_in)), as the peer
does. With flax's defaults (`--init=flax`: LeCun-normal kernels, zero biases) the
backbone's features at init are ~18x larger in lambda_max(F^T F / N) (151.8 against 8.4 on
the 200 target images), so a fixed inner step 0.1 is ~4x past GD's stability limit on the
head (eta lambda_max / 2 = 7.6 > 2): the second-order meta-gradient through n = 50 steps
grows by ~1e5 per outer step (grad norm 12, 9, 9, 7e5, 1e12, then NaN) and that row timed NaN
arithmetic (issue 32). The library's default `inner.step_size=normalized` (eta / L_hat) has
no such limit; the benchmark keeps BENCH.md's fixed step and makes the work well-posed for
both sides instead.

`--peer` also reports ours / joint *paired*: each timed step of a configuration is
followed by one step of joint, and the ratio is the median of the per-pair ratios, so the
two are timed under the same load (the unpaired ratio divides medians taken up to minutes
apart, with the peer's processes between them).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

if __name__ == "__main__":
  # As the command line does (merlin_jax/runtime/host_memory.py): malloc on transparent huge
  # pages, for ours and, through the environment it inherits, for the peer alike.
  from merlin_jax.runtime import host_memory  # noqa: E402
  host_memory.reexec_with_hugepages()

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from merlin_jax import train  # noqa: E402
from merlin_jax.inner import InnerConfig  # noqa: E402
from merlin_jax.optim import make_optimizer  # noqa: E402
from merlin_jax.methods import Context, Hyper, get_method  # noqa: E402
from merlin_jax.models import init_head, make_backbone  # noqa: E402

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SOURCE_BATCH = 128
NUM_TARGET = 200
SPLIT = 100
OUTER_LR = 0.01
INNER_LR = 0.1
IMPLICIT_WEIGHT_DECAY = 0.01

# BENCH.md's PyTorch peer (2026-12-01, load ~1.6): (median ms, ratio to joint). Only a
# rough reference: --peer times the peer beside ours in the same run.
PEER = {
    "joint": (117, 1.00),
    "merlin_n5_so": (129, 1.11),
    "merlin_n50_so": (140, 1.20),
    "merlin_n200_so": (190, 1.63),
    "merlin_n50_fo": (132, 1.13),
    "merlin_n200_fo": (159, 1.36),
}
PEER_RSS_MIB = "510-580"

_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: 1 warm-up, 3 timed steps.")
_OUT = flags.DEFINE_string("out", "", "Write the results JSON here.")
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps first (default 3; --quick: 1).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps (default 20; --quick: 3).")
_SIZES = flags.DEFINE_string("sizes", "5,50,200", "Inner steps n, comma separated.")
_CONFIGS = flags.DEFINE_string("configs", "", "Comma-separated config names (default: all).")
_SKIP_RSS = flags.DEFINE_bool("skip_rss", False, "No per-config RSS subprocesses.")
_SINGLE = flags.DEFINE_string("single", "", "Internal: run this one config alone (a child).")
_PEER = flags.DEFINE_bool("peer", False, "Time the PyTorch peer (--peer_script) and ours "
                          "(the shipped train.make_train_step) alternately in this run.")
_PEER_SCRIPT = flags.DEFINE_string(
    "peer_script", os.path.join(_ROOT, "..", "shared", "bench", "merlin_torch.py"),
    "--peer: the PyTorch peer of BENCH.md.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "--peer: alternating rounds (peer, ours) per config.")
_INIT = flags.DEFINE_enum("init", "torch", ["torch", "flax"], "Our parameters' initialisation: "
                          "PyTorch's defaults, as the peer (the module docstring says why), or "
                          "flax's.")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  name: str
  method: str                 # 'joint' | 'merlin'
  steps: int = 0              # n (merlin)
  first_order: bool = False
  remat: bool = True
  kind: str = "gd"            # the inner solver; 'implicit': steps = L-BFGS iteration cap

  @property
  def label(self) -> str:
    if self.method == "joint":
      return "joint"
    if self.kind == "implicit":
      return f"MeRLin implicit (L-BFGS, at most {self.steps} iterations, tol 1e-6)"
    order = "first order" if self.first_order else "second order"
    return f"MeRLin n={self.steps} {order}{'' if self.remat else ', no remat'}"


def all_configs(sizes=(5, 50, 200)) -> list[BenchConfig]:
  cfgs = [BenchConfig("joint", "joint")]
  for n in sizes:
    cfgs.append(BenchConfig(f"merlin_n{n}_so", "merlin", n, False, True))
  for n in sizes:
    cfgs.append(BenchConfig(f"merlin_n{n}_so_noremat", "merlin", n, False, False))
  for n in sizes:
    cfgs.append(BenchConfig(f"merlin_n{n}_fo", "merlin", n, True, True))
  for n in sizes:
    cfgs.append(BenchConfig(f"merlin_n{n}_implicit", "merlin", n, kind="implicit"))
  return cfgs


# ---------------------------------------------------------------------------------------
# The step, from the library.


def _model_cfg():
  c = ml_collections.ConfigDict()
  c.name = "small_cnn"
  c.conv_widths = (32, 64)
  c.feature_dim = 256
  c.batch_norm = False
  return c


def torch_default_init(key, params):
  """Every Dense/Conv kernel and bias redrawn from U(-1/sqrt(fan_in), +1/sqrt(fan_in)),
  PyTorch's default for nn.Linear / nn.Conv2d (kaiming_uniform with a = sqrt(5) for the
  weight; fan_in = the kernel's input size, e.g. 3 * 3 * C_in for a conv)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(flat))
  fan_in = {}
  for path, leaf in flat:   # a layer's fan-in comes from its kernel
    names = [getattr(p, "key", str(p)) for p in path]
    if names[-1] in ("kernel", "w"):
      fan_in[tuple(names[:-1])] = math.prod(leaf.shape[:-1])
  out = []
  for k, (path, leaf) in zip(keys, flat):
    names = [getattr(p, "key", str(p)) for p in path]
    bound = 1.0 / math.sqrt(fan_in[tuple(names[:-1])])
    out.append(jax.random.uniform(k, leaf.shape, leaf.dtype, -bound, bound))
  return jax.tree_util.tree_unflatten(treedef, out)


def build(cfg: BenchConfig, seed: int = 0, init: str | None = None):
  """The step as the training program runs it: `train.make_train_step` over a
  `train.TrainState`, with `optim.make_optimizer` (sgd 0.01, constant; state donated).
  Returns (jitted step, state, source, target); step(state, source, target, None) ->
  (state, metrics)."""
  backbone = make_backbone(_model_cfg(), (1,) + IMAGE_SHAPE)
  # implicit: the exact argmin needs an L2 term (strong convexity); ours: 0.01.
  inner = InnerConfig(kind=cfg.kind, steps=cfg.steps, lr=INNER_LR, step_size="fixed",
                      first_order=cfg.first_order, remat=cfg.remat, init="zeros",
                      weight_decay=IMPLICIT_WEIGHT_DECAY if cfg.kind == "implicit" else 0.0)
  hp = Hyper(num_source_classes=NUM_CLASSES, num_target_classes=NUM_CLASSES, rho=1.0,
             alpha=0.5, inner=inner, split_train_size=SPLIT, split_val_size=SPLIT,
             target_batch_size=0)
  ctx = Context(backbone=backbone, hp=hp)
  k_init, k_src, k_tgt, k_data, k_step = jax.random.split(jax.random.key(seed), 5)
  ks = jax.random.split(k_data, 4)
  source = {"inputs": jax.random.normal(ks[0], (SOURCE_BATCH,) + IMAGE_SHAPE, jnp.float32),
            "label": jax.random.randint(ks[1], (SOURCE_BATCH,), 0, NUM_CLASSES)}
  target = {"inputs": jax.random.normal(ks[2], (NUM_TARGET,) + IMAGE_SHAPE, jnp.float32),
            "label": jax.random.randint(ks[3], (NUM_TARGET,), 0, NUM_CLASSES)}
  bb_params, model_state = backbone.init(k_init, jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))
  params = {"backbone": bb_params,
            "source_head": init_head(k_src, backbone.feature_dim, NUM_CLASSES, "random")}
  if cfg.method == "joint":   # MeRLin's target head is fitted inside the step, not learned
    params["target_head"] = init_head(k_tgt, backbone.feature_dim, NUM_CLASSES, "random")
  init = init or (_INIT.value if flags.FLAGS.is_parsed() else "torch")
  if init == "torch":
    params = torch_default_init(k_init, params)
  opt_cfg = ml_collections.ConfigDict(dict(name="sgd", lr=OUTER_LR, momentum=0.0,
                                           weight_decay=0.0, schedule="constant",
                                           warmup_steps=0, grad_clip=0.0))
  tx = make_optimizer(opt_cfg, total_steps=1)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           model_state=model_state, opt_state=tx.init(params),
                           best_val_accuracy=jnp.zeros((), jnp.float32),
                           best_step=jnp.zeros((), jnp.int32))
  step = train.make_train_step(get_method(cfg.method), ctx, tx, k_step)
  return step, state, source, target


class ShippedRunner:
  """`build`'s step, compiled: `.run(warmup, steps)` -> step times (ms)."""

  def __init__(self, cfg: BenchConfig):
    self.cfg = cfg
    step, self.state, self.source, self.target = build(cfg)
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.source, self.target, None).compile()
    self.compile_s = time.perf_counter() - t0
    self.times_ms: list[float] = []
    self.loss = None

  def run(self, warmup: int, steps: int, record: bool = True) -> list[float]:
    times = []
    for i in range(warmup + steps):
      t0 = time.perf_counter()
      self.state, metrics = self.compiled(self.state, self.source, self.target, None)
      _block((self.state, metrics["loss"]))
      if i >= warmup:
        times.append((time.perf_counter() - t0) * 1e3)
    self.loss = float(metrics["loss"])
    if record:
      self.times_ms += times
    return times


def paired_ratios(runner: "ShippedRunner", joint: "ShippedRunner", steps: int) -> list[float]:
  """`steps` pairs (one step of `runner`, then one of joint): each step's time over its
  partner's, so both sides of a ratio ran under the same load. Neither side records these
  steps in its own times."""
  return [runner.run(0, 1, record=False)[0] / joint.run(0, 1, record=False)[0]
          for _ in range(steps)]


def peer_args(cfg: BenchConfig) -> list[str] | None:
  """The peer's command-line flags for `cfg` (None: the peer has no such configuration)."""
  if cfg.method == "joint":
    return ["--method", "joint"]
  if not cfg.remat or cfg.kind != "gd":
    return None   # remat and the implicit solver are ours only
  return ["--method", "merlin", "--n", str(cfg.steps)] + (["--first-order"] if cfg.first_order
                                                           else [])


def run_peer(script: str, cfg: BenchConfig, warmup: int, steps: int) -> list[float]:
  cmd = [sys.executable, script, *peer_args(cfg), "--warmup", str(warmup), "--steps",
         str(steps), "--threads", str(os.cpu_count() or 1)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"peer {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  return [1e3 * r["time_s"] for r in rows if "time_s" in r]


def peer_round_robin(cfgs, warmup: int, steps: int, rounds: int, script: str, log=print):
  """Rounds of (peer, ours) per configuration, alternating, in this one run: the machine's
  load moves both sides alike. Medians over every timed step of every round."""
  cfgs = [c for c in cfgs if peer_args(c) is not None]
  ours = {}
  for cfg in cfgs:
    ours[cfg.name] = ShippedRunner(cfg)
    log(f"  compiled {cfg.name:24s} {ours[cfg.name].compile_s:6.2f}s")
  peer_ms = {c.name: [] for c in cfgs}
  round_medians = {c.name: [] for c in cfgs}
  paired = {c.name: [] for c in cfgs}          # per round: median of the paired ratios
  joint = ours.get("joint")
  for r in range(rounds):
    for cfg in cfgs:
      p = run_peer(script, cfg, warmup, steps)
      o = ours[cfg.name].run(warmup, steps)
      peer_ms[cfg.name] += p
      round_medians[cfg.name].append((statistics.median(p), statistics.median(o)))
      if joint is not None and cfg.name != "joint":
        paired[cfg.name].append(statistics.median(paired_ratios(ours[cfg.name], joint, steps)))
      log(f"  round {r} {cfg.name:24s} peer {statistics.median(p):7.1f} ms  "
          f"ours {statistics.median(o):7.1f} ms"
          + (f"  ours / joint paired {paired[cfg.name][-1]:.3f}" if paired[cfg.name] else "")
          + f"  load {_load()}")
  out = {}
  for cfg in cfgs:
    o, p = ours[cfg.name].times_ms, peer_ms[cfg.name]
    out[cfg.name] = {"label": cfg.label, "ours_ms": statistics.median(o),
                     "peer_ms": statistics.median(p), "ours_times_ms": o, "peer_times_ms": p,
                     "round_medians": round_medians[cfg.name],
                     "compile_s": ours[cfg.name].compile_s, "final_loss": ours[cfg.name].loss,
                     "paired_ratio_rounds": paired[cfg.name],
                     "paired_ratio": (statistics.median(paired[cfg.name]) if paired[cfg.name]
                                      else 1.0 if cfg.name == "joint" else None)}
  j = out.get("joint")
  for v in out.values():
    v["ours_ratio"] = v["ours_ms"] / j["ours_ms"] if j else None
    v["peer_ratio"] = v["peer_ms"] / j["peer_ms"] if j else None
  return out


def peer_table(res: dict) -> str:
  lines = ["| config | ours ms | ours / joint | ours / joint, paired (per round) | peer ms "
           "| peer / joint | peer / ours (per round) |",
           "|---|---|---|---|---|---|---|"]
  for v in res.values():
    rounds = v.get("paired_ratio_rounds") or []
    per_round = " ".join(f"{p / o:.2f}" for p, o in v["round_medians"])
    paired = ("1.00" if v.get("paired_ratio") == 1.0 and not rounds else
              f"{v['paired_ratio']:.3f} ({' '.join(f'{x:.2f}' for x in rounds)})"
              if rounds else "–")
    lines.append(f"| {_label(v)} | {v['ours_ms']:.1f} | {v['ours_ratio']:.2f} | {paired} | "
                 f"{v['peer_ms']:.1f} | {v['peer_ratio']:.2f} | "
                 f"{v['peer_ms'] / v['ours_ms']:.2f} ({per_round}) |")
  n200 = res.get("merlin_n200_so")
  if n200:
    worst = max(n200.get("paired_ratio_rounds") or [n200["ours_ratio"]])
    lines.append(f"\nGoal MeRLin n=200 / joint <= 1.10: {n200['ours_ratio']:.2f} unpaired, "
                 f"paired worst round {worst:.3f} "
                 f"({'met' if max(worst, n200['ours_ratio']) <= 1.10 else 'NOT met'}); "
                 f"faster than the peer at every config: "
                 f"{all(v['ours_ms'] < v['peer_ms'] for v in res.values())}")
  return "\n".join(lines)


def _label(result: dict) -> str:
  """The row label; a run whose outer training diverged says so (its steps were timed on
  NaNs: the same work, but not a healthy run)."""
  loss = result.get("final_loss")
  return result["label"] + ("" if loss is None or math.isfinite(loss) else
                            " (ours diverged: non-finite loss)")


def _load(avg=None) -> str:
  return " ".join(f"{x:.2f}" for x in (avg or os.getloadavg()))


def _block(tree):
  jax.block_until_ready(tree)


def _memory_analysis(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return None
  if m is None:
    return None
  out = {}
  for field in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    v = getattr(m, field, None)
    if v is not None:
      out[field.replace("_size_in_bytes", "_bytes")] = int(v)
  if out:
    out["total_bytes"] = (out.get("temp_bytes", 0) + out.get("argument_bytes", 0)
                          + out.get("output_bytes", 0) - out.get("alias_bytes", 0))
  return out


class Runner:
  """One configuration, compiled and ready: `.step()` runs and times one outer step."""

  def __init__(self, cfg: BenchConfig):
    self.cfg = cfg
    jitted, self.state, self.source, self.target = build(cfg)
    t0 = time.perf_counter()
    lowered = jitted.lower(self.state, self.source, self.target, None)
    t1, c1 = time.perf_counter(), time.process_time()
    self.compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    self.lower_s, self.compile_s = t1 - t0, t2 - t1
    self.compile_cpu_s = c2 - c1   # CPU time of compiling (all threads)
    self.memory = _memory_analysis(self.compiled)
    self.times_ms: list[float] = []
    self.cpu_ms: list[float] = []   # process CPU time (all threads) per step
    self.loss = None

  def step(self, record: bool) -> None:
    c0, t0 = time.process_time(), time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.source, self.target, None)
    loss = metrics["loss"]
    _block((self.state, loss))
    dt = (time.perf_counter() - t0) * 1e3
    dc = (time.process_time() - c0) * 1e3
    if record:
      self.times_ms.append(dt)
      self.cpu_ms.append(dc)
    self.loss = float(loss)


def _rss_mib() -> float:
  """Peak RSS of this process, MiB (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _proc_status_mib(field: str):
  """VmRSS (current) / VmHWM (peak since start or since the last reset), MiB."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ---------------------------------------------------------------------------------------
# Measurements.


def round_robin(cfgs, warmup: int, steps: int, log=print) -> dict:
  runners = []
  for cfg in cfgs:
    r = Runner(cfg)
    log(f"  compiled {cfg.name:24s} lower {r.lower_s:6.2f}s compile {r.compile_s:6.2f}s")
    runners.append(r)
  for _ in range(warmup):
    for r in runners:
      r.step(record=False)
  for _ in range(steps):
    for r in runners:
      r.step(record=True)
  out = {}
  for r in runners:
    if not math.isfinite(r.loss):   # timed all the same; flagged in the tables
      log(f"  WARNING {r.cfg.name}: non-finite loss {r.loss} after its timed steps")
    out[r.cfg.name] = {
        "label": r.cfg.label,
        "median_ms": statistics.median(r.times_ms),
        "min_ms": min(r.times_ms),
        "max_ms": max(r.times_ms),
        "times_ms": r.times_ms,
        "median_cpu_ms": statistics.median(r.cpu_ms),
        "lower_s": r.lower_s,
        "compile_s": r.compile_s,
        "compile_cpu_s": r.compile_cpu_s,
        "xla_memory": r.memory,
        "final_loss": r.loss,
    }
  joint = out.get("joint", {}).get("median_ms")
  for v in out.values():
    v["ratio_to_joint"] = v["median_ms"] / joint if joint else None
  return out


def single(name: str, steps: int) -> dict:
  """Child process: one configuration alone, for its peak RSS.

  peak_rss_mib is ru_maxrss of this fresh process (the whole process: Python, JAX, XLA,
  the data, the compiled step). step_rss_mib isolates the step: VmHWM after compiling
  and running it, minus the RSS just before (the peak is reset there via clear_refs).
  """
  cfg = {c.name: c for c in all_configs(_sizes_from_name(name))}[name]
  jnp.zeros(()).block_until_ready()           # backend up before the baseline
  rss_baseline = _proc_status_mib("VmRSS")
  reset = _reset_peak_rss()
  r = Runner(cfg)
  rss_compiled = _proc_status_mib("VmHWM")
  for _ in range(steps):
    r.step(record=True)
  hwm = _proc_status_mib("VmHWM")
  return {"name": name, "peak_rss_mib": _rss_mib(), "rss_baseline_mib": rss_baseline,
          "vmhwm_after_compile_mib": rss_compiled, "vmhwm_mib": hwm,
          "step_rss_mib": (hwm - rss_baseline) if (reset and hwm and rss_baseline) else None,
          "compile_s": r.compile_s, "compile_cpu_s": r.compile_cpu_s, "lower_s": r.lower_s,
          "median_ms": statistics.median(r.times_ms) if r.times_ms else None,
          "xla_memory": r.memory}


def _sizes_from_name(name: str):
  if name.startswith("merlin_n"):
    return (int(name[len("merlin_n"):].split("_")[0]),)
  return ()


def rss_subprocesses(cfgs, steps: int, log=print) -> dict:
  out = {}
  for cfg in cfgs:
    cmd = [sys.executable, os.path.abspath(__file__), f"--single={cfg.name}",
           f"--steps={steps}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"{cfg.name} subprocess failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"  rss {cfg.name:24s} peak {res['peak_rss_mib']:7.1f} MiB "
        f"(baseline {res['rss_baseline_mib']:.1f}, step {res['step_rss_mib']}) "
        f"compile {res['compile_s']:.2f}s")
    out[cfg.name] = res
  return out


# ---------------------------------------------------------------------------------------
# Report.


def _mib(b):
  return "–" if b is None else f"{b / 2**20:.2f}"


def tables(timing: dict, rss: dict | None) -> str:
  lines = []
  lines.append("| config | median step ms | ratio / joint | peer ms | peer ratio | compile s "
               "| CPU ms / step | compile s (own process) | XLA temp MiB | XLA arg+out MiB "
               "| peak RSS MiB (own process) | step RSS MiB (peak over baseline) |")
  lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, t in timing.items():
    peer = PEER.get(name)
    mem = t["xla_memory"] or {}
    arg_out = (mem.get("argument_bytes", 0) + mem.get("output_bytes", 0)) if mem else None
    r = rss.get(name) if rss else None
    lines.append(
        f"| {_label(t)} | {t['median_ms']:.1f} | {t['ratio_to_joint']:.2f} | "
        f"{peer[0] if peer else '–'} | {f'{peer[1]:.2f}' if peer else '–'} | "
        f"{t['compile_s']:.2f} | {t['median_cpu_ms']:.0f} | "
        f"{'%.2f' % r['compile_s'] if r else '–'} | "
        f"{_mib(mem.get('temp_bytes'))} | {_mib(arg_out)} | "
        f"{'%.0f' % r['peak_rss_mib'] if r else '–'} | "
        f"{'%.0f' % r['step_rss_mib'] if r and r['step_rss_mib'] is not None else '–'} |")
  lines.append(f"\nPeer peak RSS: {PEER_RSS_MIB} MiB for every configuration.")

  # The goals.
  def get(n, suffix="so"):
    return timing.get(f"merlin_n{n}_{suffix}")
  goals = []
  j = timing.get("joint")
  if j and get(50):
    goals.append(("MeRLin n=50 / joint step time", get(50)["ratio_to_joint"], 1.10))
  if j and get(200):
    goals.append(("MeRLin n=200 / joint step time", get(200)["ratio_to_joint"], 1.10))
  for suffix, what in (("so", "remat"), ("so_noremat", "no remat")):
    a, b = get(5, suffix), get(200, suffix)
    if a and b:
      if a["xla_memory"] and b["xla_memory"]:
        goals.append((f"n=200 / n=5 XLA total memory ({what})",
                      b["xla_memory"]["total_bytes"] / a["xla_memory"]["total_bytes"], 1.10))
      if rss and a and f"merlin_n5_{suffix}" in rss and f"merlin_n200_{suffix}" in rss:
        goals.append((f"n=200 / n=5 peak RSS ({what})",
                      rss[f"merlin_n200_{suffix}"]["peak_rss_mib"]
                      / rss[f"merlin_n5_{suffix}"]["peak_rss_mib"], 1.10))
      goals.append((f"n=200 / n=5 compile time ({what})", b["compile_s"] / a["compile_s"], 1.20))
      if "compile_cpu_s" in a and "compile_cpu_s" in b:
        goals.append((f"n=200 / n=5 compile CPU time ({what})",
                      b["compile_cpu_s"] / a["compile_cpu_s"], 1.20))
  if goals:
    lines.append("\n| goal | ours | limit | met |")
    lines.append("|---|---|---|---|")
    for what, ours, limit in goals:
      lines.append(f"| {what} | {ours:.2f} | ≤ {limit:.2f} | {'yes' if ours <= limit else 'NO'} |")
  faster = [(n, t["median_ms"], PEER[n][0]) for n, t in timing.items() if n in PEER]
  if faster:
    lines.append("\nAbsolute ms vs peer: " + ", ".join(
        f"{n} {ours:.0f} vs {p}" for n, ours, p in faster))
  return "\n".join(lines)


def main(argv):
  del argv
  if _SINGLE.value:
    print(json.dumps(single(_SINGLE.value, _STEPS.value if _STEPS.value is not None else 5)))
    return 0

  warmup = _WARMUP.value if _WARMUP.value is not None else (1 if _QUICK.value else 3)
  steps = _STEPS.value if _STEPS.value is not None else (3 if _QUICK.value else 20)
  sizes = tuple(int(s) for s in _SIZES.value.split(",") if s)
  cfgs = all_configs(sizes)
  if _CONFIGS.value:
    wanted = set(_CONFIGS.value.split(","))
    cfgs = [c for c in cfgs if c.name in wanted or c.name == "joint"]

  meta = {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "machine": platform.platform(), "warmup": warmup, "steps": steps,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "init": _INIT.value,
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "load_average_start": os.getloadavg(),
  }
  print(f"# {meta['command']}  {meta['date_utc']}  jax {meta['jax']} {meta['backend']} "
        f"{meta['cpu_count']} CPUs  warmup {warmup} steps {steps}  init {_INIT.value}  "
        f"load average {_load()}  GLIBC_TUNABLES={meta['glibc_tunables'] or '-'}", flush=True)
  log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
  if _PEER.value:
    res = peer_round_robin(cfgs, warmup, steps, _ROUNDS.value, _PEER_SCRIPT.value, log)
    meta["load_average_end"] = os.getloadavg()
    print(peer_table(res))
    print(f"Load average (1, 5, 15 min) at the start {_load(meta['load_average_start'])}, "
          f"at the end {_load(meta['load_average_end'])}")
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump({"meta": meta, "peer_round_robin": res}, f, indent=1)
    return 0
  # The RSS children first: a child's ru_maxrss starts from the RSS of the process that
  # spawned it (the kernel carries the pre-exec high-water mark over), so spawn them
  # while this process is still small (JAX imported, nothing compiled).
  rss = None if _SKIP_RSS.value else rss_subprocesses(cfgs, 1 if _QUICK.value else 5, log)
  timing = round_robin(cfgs, warmup, steps, log)
  print(tables(timing, rss))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"meta": meta, "timing": timing, "rss": rss, "peer": PEER}, f, indent=1)
  return 0


if __name__ == "__main__":
  app.run(main)
