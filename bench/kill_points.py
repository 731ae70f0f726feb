r"""kill -9 one run at N random points, rerun to the end, compare with an uninterrupted run.

    python bench/kill_points.py [--points=10] [--seed=0] [--steps=100] [--method=joint]

The real command line (`python -m merlin_jax.main`, configs/synthetic.py, one CPU device):
an uninterrupted reference run, then ONE workdir that is killed (SIGKILL) at `points`
random moments (a random number of milliseconds after a random logged step, so kills land
in steps, evaluations, metric writes and checkpoint saves alike) and restarted each time,
then run to the end. Prints, per kill, the step it was killed at, the checkpoint it resumed
from and whether metrics.jsonl already had duplicate or torn lines; then whether the final
metrics.jsonl (every record, timings aside) and model.safetensors equal the reference's,
bitwise. Exit status 0 when they do.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_POINTS = flags.DEFINE_integer("points", 10, "How many kills.")
_SEED = flags.DEFINE_integer("seed", 0, "Draws the kill points.")
_STEPS = flags.DEFINE_integer("steps", 100, "total_steps of the run.")
_METHOD = flags.DEFINE_string("method", "joint", "The method to run.")
TIMING = ("steps_per_sec", "train_seconds")


def _env(cache):
  return dict(os.environ, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", TF_CPP_MIN_LOG_LEVEL="2",
              PYTHONPATH=ROOT)


def _cmd(workdir):
  return [sys.executable, "-m", "merlin_jax.main", f"--config={ROOT}/configs/synthetic.py",
          f"--workdir={workdir}", f"--config.method={_METHOD.value}",
          f"--config.total_steps={_STEPS.value}", "--config.checkpoint_every=10",
          "--config.eval.every=5", "--config.keep_checkpoints=2"]


def _lines(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return f.read().splitlines()
  except FileNotFoundError:
    return []


def _last_step(workdir):
  for line in reversed(_lines(workdir)):
    try:
      return json.loads(line)["step"]
    except (ValueError, KeyError):
      continue
  return -1


def _records(workdir):
  return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in _lines(workdir)]


def _sha(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def main(argv):
  del argv
  rng = random.Random(_SEED.value)
  tmp = tempfile.mkdtemp(prefix="kill_points_")
  env = _env(os.path.join(tmp, "cache"))
  ref, run = os.path.join(tmp, "reference"), os.path.join(tmp, "run")
  t0 = time.time()
  subprocess.run(_cmd(ref), env=env, check=True, capture_output=True, cwd=ROOT)
  print(f"reference: {time.time() - t0:.0f} s, {len(_records(ref))} records", flush=True)
  print("| kill | after step | + ms | killed at step | checkpoints then | duplicate/torn lines |")
  print("|---|---|---|---|---|---|")
  kills, steps = 0, sorted(rng.sample(range(0, _STEPS.value), _POINTS.value))
  for after in steps:
    after = max(after, _last_step(run) + 1)   # a point this start has to reach again
    delay = rng.uniform(0, 0.1)
    before = _lines(run)
    with open(os.path.join(tmp, "log"), "w") as log:
      proc = subprocess.Popen(_cmd(run), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=log)
      # Wait for this start to write (a resume first cuts the file back to its checkpoint).
      while ((_lines(run) == before or _last_step(run) < after)
             and proc.poll() is None):
        time.sleep(0.001)
      time.sleep(delay)
      if proc.poll() is not None:
        print(f"| - | {after} | {delay * 1e3:.0f} | finished before the kill | | |")
        break
      proc.kill()
      proc.wait()
    kills += 1
    lines = _lines(run)
    ckpts = sorted(int(n) for n in os.listdir(os.path.join(run, "checkpoints")) if n.isdigit()) \
        if os.path.isdir(os.path.join(run, "checkpoints")) else []
    dup = len(lines) - len(set(lines))
    torn = sum(1 for l in lines if not l.endswith("}"))
    print(f"| {kills} | {after} | {delay * 1e3:.0f} | {_last_step(run)} | {ckpts} | "
          f"{dup}/{torn} |", flush=True)
  out = subprocess.run(_cmd(run), env=env, capture_output=True, text=True, cwd=ROOT)
  same_records = _records(run) == _records(ref)
  same_model = _sha(os.path.join(run, "model.safetensors")) == _sha(
      os.path.join(ref, "model.safetensors"))
  with open(os.path.join(run, "provenance.json")) as f:
    starts = [r["start_step"] for r in json.load(f)]
  print(f"\n{kills} kills; final rerun exit {out.returncode}; starts at steps {starts}")
  print(f"metrics.jsonl equal to the reference (every record, timings aside): {same_records} "
        f"({len(_records(run))} records)")
  print(f"model.safetensors bitwise equal: {same_model}")
  shutil.rmtree(tmp, ignore_errors=True)
  sys.exit(0 if (same_records and same_model and out.returncode == 0) else 1)


if __name__ == "__main__":
  app.run(main)
