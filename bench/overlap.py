"""Does the input pipeline overlap the train step? Steps/s of the shipped training loop with
a fast and a deliberately slow source, syncing with the host every step vs every window.

  python bench/overlap.py [--config=configs/digits.py] [--method=joint] [--steps=150]
      [--delay_ms=0] [--repeats=2]

Runs `train.train_and_evaluate` (the code users run) on the README's digits default, with
the source stream wrapped to sleep `delay` before each batch (a slow input pipeline: host
time that does not need the device), and two loop settings:
  - `log_every=1`: the host reads the metrics (NaN check, loss) after every step, as the loop
    did before: it waits for step s before fetching the input of step s+1;
  - `log_every=50`: the loop reads them only at sync points, so while the device runs step s
    the host already fetches and dispatches step s+1.
`--delay_ms=0` (default) sets the delay to the measured mean step time (input as slow as the
step). Each cell is the training-only steps/s the run itself reports (its `_TrainClock`: no
compilation, evaluation or checkpoints), best of `--repeats`, in one run, cells alternating.
Perfect overlap: slow/fast = 1 at window sync; none: slow/fast = step / (step + delay).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

from absl import app, flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

_CONFIG = flags.DEFINE_string("config", "configs/digits.py", "Config (file.py[:arg]).")
_METHOD = flags.DEFINE_string("method", "joint", "Method to time.")
_STEPS = flags.DEFINE_integer("steps", 150, "Outer steps per run.")
_DELAY = flags.DEFINE_float("delay_ms", 0.0, "Per-batch input delay (0: the mean step time).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs per cell (best is reported).")


class SlowSource:
  """A source stream whose every batch costs `delay` seconds of host time first."""

  def __init__(self, source, delay: float):
    self.source, self.delay = source, delay

  def __getattr__(self, name):
    return getattr(self.source, name)

  def batches(self, start_step, global_batch_size):
    inner = self.source.batches(start_step, global_batch_size)
    while True:
      time.sleep(self.delay)
      yield next(inner)


def run(config_spec, method, steps, log_every, delay) -> float:
  """Training-only steps/s of one fresh run (the last train record's `steps_per_sec`)."""
  from merlin_jax import config_base, train
  from merlin_jax.data import pipeline
  from merlin_jax.runtime.metrics import read_jsonl
  config = config_base.load_config(config_spec)
  config_base.override(config, {"method": method, "total_steps": steps, "log_every": log_every,
                                "eval.every": steps, "checkpoint_every": steps})
  real = pipeline.load_transfer_data

  def slow(*args, **kwargs):
    data = real(*args, **kwargs)
    return dataclasses.replace(data, source=SlowSource(data.source, delay))

  pipeline.load_transfer_data = slow
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train.train_and_evaluate(config, workdir)
      rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "steps_per_sec" in r]
      return rows[-1]["steps_per_sec"]
  finally:
    pipeline.load_transfer_data = real


def main(argv):
  del argv
  os.environ.setdefault("MERLIN_JAX_TENSORBOARD", "0")
  from merlin_jax.runtime.metrics import quiet_library_logs
  quiet_library_logs()
  spec, method, steps = _CONFIG.value, _METHOD.value, _STEPS.value
  delay = _DELAY.value / 1e3
  if delay <= 0:   # as slow as the step: measured on a windowed, fast run
    delay = 1.0 / run(spec, method, steps, 50, 0.0)
  cells = [(le, d) for _ in range(_REPEATS.value) for le in (1, 50) for d in (0.0, delay)]
  best = {}
  for le, d in cells:
    rate = run(spec, method, steps, le, d)
    best[le, d] = max(best.get((le, d), 0.0), rate)
    print(f"log_every={le:<3d} delay={1e3 * d:6.1f} ms  {rate:7.2f} steps/s", flush=True)
  print(f"\n{method} on {spec}, {steps} steps, input delay {1e3 * delay:.1f} ms per batch "
        f"(best of {_REPEATS.value})\n")
  print("| host sync | fast input steps/s | slow input steps/s | slow / fast |")
  print("|---|---|---|---|")
  for le, name in ((1, "every step (before)"), (50, "every 50 steps (now)")):
    fast, slow_ = best[le, 0.0], best[le, delay]
    print(f"| {name} | {fast:.2f} | {slow_:.2f} | {slow_ / fast:.2f} |")


if __name__ == "__main__":
  app.run(main)
