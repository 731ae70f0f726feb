"""Two JAX CPU processes of the CLI on the synthetic pair: the uninterrupted reference run
that tests/test_slurm.py and tests/test_lifeline.py compare a preempted / killed run with
(the `two_process_reference` fixture in conftest.py builds it once per session)."""

from __future__ import annotations

import os
import subprocess
import sys

from merlin_jax.runtime.metrics import read_jsonl
from tests.test_reliability import TIMING_KEYS, _digest, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")
# joint (the cheapest step to compile); long enough after checkpoint 10 that a stop sent
# then lands mid-run (~15 steps/s on a quiet machine).
RUN = {"method": "joint", "total_steps": 80, "checkpoint_every": 10, "eval.every": 10}
FLAGS = [f"--config.{k}={v}" for k, v in RUN.items()]


def env(cache):
  return subprocess_env(cache)


def local_sh(workdir, environ, *extra, timeout=400):
  """launch/local.sh --processes=2 of the CLI; -> CompletedProcess (process 1's log is
  WORKDIR/process_1.log)."""
  return subprocess.run([os.path.join(ROOT, "launch", "local.sh"), "--processes=2",
                         f"--config={CONFIG}", f"--workdir={workdir}", "--timeout=300",
                         f"--python={sys.executable}", "--", *FLAGS, *extra],
                        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def build_reference(workdir, cache):
  out = local_sh(workdir, env(cache))
  assert out.returncode == 0, out.stderr[-4000:]
  return workdir


def records(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_result(workdir, reference):
  assert records(workdir) == records(reference)
  assert _digest(os.path.join(workdir, "model.safetensors")) == \
      _digest(os.path.join(reference, "model.safetensors"))
