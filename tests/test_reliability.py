"""A run survives kill -9, SIGTERM (preemption), corrupt checkpoints and NaNs, and records
what it ran with. The real command line (`python -m merlin_jax.main`) on the synthetic pair
(configs/synthetic.py), in subprocesses where a process must die.

Bitwise: a run killed or preempted and restarted ends with the same metrics.jsonl (timings
aside) and the same exported model bytes as an uninterrupted run (CPU, same device count).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from merlin_jax import train
from merlin_jax.runtime import checkpointing, provenance
from merlin_jax.config_base import load_config, override
from merlin_jax.runtime.metrics import read_jsonl
from tests.helpers import (
    TIMING_KEYS, assert_one_line_error, data_files, digest, flip_one_bit, run_cli,
    subprocess_env, tree_digest)

# orbax's reader threads may log "Event loop is closed" after a failed read of a corrupt step.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")
# joint: the cheapest step to compile; 40 steps, checkpoints every 10, evals every 5.
RUN = {"method": "joint", "total_steps": 40, "checkpoint_every": 10, "eval.every": 5}


def _config(**overrides):
  return override(load_config(CONFIG), {**RUN, **overrides})


def _flags(**overrides):
  return [f"--config.{k}={v}" for k, v in {**RUN, **overrides}.items()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Subprocess env: 1 CPU device, no TensorBoard (skips TF's import), and a compilation
  cache shared by the subprocesses (compiled once; results are the same executables)."""
  return subprocess_env(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run (in-process: the same XLA CPU executables as the CLI's)."""
  workdir = tmp_path_factory.mktemp("reference")
  old = os.environ.get("MERLIN_JAX_TENSORBOARD")
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  try:
    train.train_and_evaluate(_config(), str(workdir))
  finally:
    if old is None:
      os.environ.pop("MERLIN_JAX_TENSORBOARD")
    else:
      os.environ["MERLIN_JAX_TENSORBOARD"] = old
  return workdir


def _cli(workdir, *extra):
  return [sys.executable, "-m", "merlin_jax.main", f"--config={CONFIG}",
          f"--workdir={workdir}", *_flags(), *extra]


def _records(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _assert_same_result(workdir, reference):
  assert _records(workdir) == _records(reference)          # every loss, eval, final metric
  assert digest(workdir / "model.safetensors") == digest(reference / "model.safetensors")


def _last_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return -1
  with open(path) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  try:
    return json.loads(lines[-1])["step"] if lines else -1
  except json.JSONDecodeError:  # a line being written
    return -1


def _start_and_stop(cmd, env, until, sig, timeout=300):
  """Start `cmd`, poll until `until()` holds, send `sig`; -> (returncode, stderr)."""
  log = cmd[4].split("=", 1)[1] + f".{sig.name}.log"   # beside the workdir (a file: no pipe to fill)
  with open(log, "w") as errf:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errf)
    deadline = time.time() + timeout
    try:
      while not until():
        if proc.poll() is not None:
          pytest.fail(f"the run ended before it could be stopped:\n{open(log).read()[-3000:]}")
        if time.time() > deadline:
          pytest.fail("timed out waiting for the run to reach the stop point")
        time.sleep(0.002)
      proc.send_signal(sig)
      proc.wait(timeout=timeout)
    finally:
      if proc.poll() is None:
        proc.kill()
  with open(log) as f:
    return proc.returncode, f.read()


def _finish(workdir, env):
  out = subprocess.run(_cli(workdir), env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


def test_kill9_at_two_points_then_rerun_equals_uninterrupted_run(tmp_path, env, reference):
  workdir = tmp_path / "run"
  # 1) Between checkpoints: as soon as step 13 is logged (checkpoint 10 exists, 20 not yet).
  rc, _ = _start_and_stop(_cli(workdir), env, lambda: _last_step(workdir) >= 13, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  killed_at_1 = _last_step(workdir)
  assert killed_at_1 < 40 and not (workdir / "model.safetensors").exists()
  # 2) Restart; kill right after checkpoint 30 is committed (possibly mid-way through the
  #    metrics/eval of step 30 and the step after it).
  rc, _ = _start_and_stop(_cli(workdir), env,
                          lambda: os.path.isdir(workdir / "checkpoints" / "30"), signal.SIGKILL)
  assert rc == -signal.SIGKILL
  assert not (workdir / "model.safetensors").exists()
  # 3) Restart to the end.
  err = _finish(workdir, env)
  assert "Resumed from" in err
  _assert_same_result(workdir, reference)
  starts = provenance.read(workdir)
  # (>= 20: a kill in orbax's finalisation of 30 would fall back to 20, still exactly.)
  assert len(starts) == 3 and starts[0]["start_step"] == 0 and starts[-1]["start_step"] >= 20
  print(f"killed at steps ~{killed_at_1} and ~30")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_saves_a_checkpoint_exits_75_and_resumes(tmp_path, env, reference, sig):
  """SIGTERM (a preemption notice) and SIGINT (Ctrl-C) alike."""
  workdir = tmp_path / "run"
  # checkpoint_every=10: stopping at step 5..9 must save an extra checkpoint of that step.
  rc, err = _start_and_stop(_cli(workdir), env, lambda: _last_step(workdir) >= 5, sig)
  assert rc == 75, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  steps = checkpointing.make_manager(str(workdir / "checkpoints"), 5).all_steps()
  stopped = max(steps)
  assert f"preempted ({sig.name}) at step {stopped}" in err          # the log line
  assert err.strip().splitlines()[-1].startswith(f"merlin_jax: preempted at step {stopped}")
  assert _last_step(workdir) == stopped     # metrics up to the saved step, nothing after
  err = _finish(workdir, env)
  assert f"Resumed from {workdir / 'checkpoints'} at step {stopped}" in err
  _assert_same_result(workdir, reference)


def test_two_runs_on_one_workdir_one_is_refused_and_a_killed_holder_frees_it(tmp_path, env,
                                                                            reference):
  """The same command twice at once: the second stops with one line naming the first's
  pid; kill -9 of the first (before its first checkpoint) leaves no stale lock, and the
  rerun ends exactly like an uninterrupted run."""
  workdir = tmp_path / "run"
  log = open(tmp_path / "first.log", "w")
  first = subprocess.Popen(_cli(workdir), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=log)
  try:
    deadline = time.time() + 300
    while _last_step(workdir) < 2:   # started, before checkpoint 10
      assert first.poll() is None and time.time() < deadline, open(tmp_path / "first.log").read()
      time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)   # holds the workdir for as long as the second needs
    second = subprocess.run(_cli(workdir), env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  finally:
    if first.poll() is None:
      first.kill()
    log.close()
  message = assert_one_line_error(second.returncode, second.stderr,
                                  f"is in use by another run (pid {first.pid} on host")
  print(f"TABLE|second_run_on_a_busy_workdir|{message}")
  assert not (workdir / "model.safetensors").exists()
  _finish(workdir, env)
  _assert_same_result(workdir, reference)


def test_sigterm_flag_is_checked_once_per_step(tmp_path, monkeypatch):
  """In-process: the handler only sets the flag; the loop saves and raises Preempted."""
  from merlin_jax import errors
  from merlin_jax.runtime import preemption
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  real = train.make_train_step

  def make(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(state, *rest):
      new, metrics = step(state, *rest)
      if int(new.step) == 3:
        os.kill(os.getpid(), signal.SIGTERM)   # the real signal, to the real handler
      return new, metrics
    return wrapped

  monkeypatch.setattr(train, "make_train_step", make)
  with pytest.raises(errors.Preempted, match="preempted at step 3"):
    train.train_and_evaluate(_config(total_steps=8), str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [3]
  assert signal.getsignal(signal.SIGTERM) is not preemption._handler  # handler removed
  assert not preemption._requested.is_set()


def test_the_host_runs_at_most_two_steps_ahead_of_the_device(tmp_path, monkeypatch):
  """Between sync points the host dispatches without reading results, but it waits for
  step t-2 before dispatching t+1: a stop (checked on the host) then lands within ~2 steps
  of the device, not after every step of a window already queued. Each step here carries
  a slow extra computation, so a host that does not wait would queue the whole window."""
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  real = train.make_train_step
  slow = jax.jit(lambda x: jax.lax.fori_loop(0, 60, lambda i, y: jax.numpy.tanh(y @ y), x).sum())
  x = jax.numpy.full((192, 192), 0.01)
  queued, extra = [], []

  def make(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(state, *rest):
      queued.append(sum(not e.is_ready() for e in extra))   # steps still on the device
      new, metrics = step(state, *rest)
      extra.append(slow(x + new.step))
      return new, dict(metrics, slow=extra[-1])
    return wrapped

  monkeypatch.setattr(train, "make_train_step", make)
  train.train_and_evaluate(_config(total_steps=12, log_every=12, checkpoint_every=12,
                                   **{"eval.every": 12}), str(tmp_path))
  assert len(queued) == 12 and max(queued) <= 2, queued


# --- corrupt / half-written checkpoints --------------------------------------------------


@pytest.fixture(scope="module")
def finished_joint(tmp_path_factory):
  """A finished 10-step joint run (this module's RUN: the cheapest step to compile) with
  checkpoints 5 and 10, in-process; conftest's `finished` is the CLI's synthetic default."""
  workdir = tmp_path_factory.mktemp("finished")
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  try:
    train.train_and_evaluate(_config(total_steps=10, checkpoint_every=5), str(workdir))
  finally:
    os.environ.pop("MERLIN_JAX_TENSORBOARD")
  return workdir


def _truncate(step_dir):
  for f in data_files(step_dir):
    if f"{os.sep}d{os.sep}" in f:
      os.truncate(f, os.path.getsize(f) // 2)


def _garble(step_dir):
  for f in data_files(step_dir):
    with open(f, "r+b") as fh:
      data = bytearray(fh.read())
      for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
        data[i] ^= 0x5A
      fh.seek(0)
      fh.write(data)


def _empty_dir(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


@pytest.mark.parametrize("corrupt", [_truncate, _garble, flip_one_bit, _empty_dir],
                         ids=["truncated", "garbled", "one_bit_flipped", "empty"])
def test_corrupt_latest_checkpoint_falls_back_and_is_moved_aside(tmp_path, finished_joint,
                                                                 corrupt,
                                                                 monkeypatch, caplog):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  workdir = tmp_path / "run"
  shutil.copytree(finished_joint, workdir)
  ckpts = workdir / "checkpoints"
  corrupt(str(ckpts / "10"))
  # ...and a half-written save left behind by a kill -9.
  shutil.copytree(finished_joint / "checkpoints" / "5", ckpts / "15.orbax-checkpoint-tmp-1234")
  _truncate(str(ckpts / "15.orbax-checkpoint-tmp-1234"))
  caplog.set_level("WARNING")
  train.train_and_evaluate(_config(total_steps=15, checkpoint_every=5), str(workdir))
  log = caplog.text
  assert "RESUMING FROM AN OLDER CHECKPOINT" in log and "resuming from step 5" in log
  if corrupt is flip_one_bit:
    assert "checksum mismatch" in log
  assert (workdir / "checkpoints_corrupt" / "10").is_dir()
  assert (workdir / "checkpoints_corrupt" / "15.orbax-checkpoint-tmp-1234").is_dir()
  # Saving went on normally: 10 recomputed and 15 written, the good ones kept.
  assert sorted(int(s) for s in os.listdir(ckpts)) == [10, 15]
  records = _records(workdir)
  assert records[-1]["final"] and records[-1]["step"] == 15
  # Steps 6..10 were recomputed exactly: the same losses as the first run logged.
  first = {r["step"]: r["loss"] for r in _records(finished_joint) if "loss" in r}
  again = {r["step"]: r["loss"] for r in records if "loss" in r}
  assert all(again[s] == first[s] for s in range(1, 11))


def test_all_checkpoints_unreadable_is_one_error_and_moves_nothing(tmp_path, finished_joint,
                                                                    monkeypatch):
  from merlin_jax.errors import UserError
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  workdir = tmp_path / "run"
  shutil.copytree(finished_joint, workdir)
  for step in ("5", "10"):
    _garble(str(workdir / "checkpoints" / step))
  with pytest.raises(UserError, match="no checkpoint in .* can be read"):
    train.train_and_evaluate(_config(total_steps=10, checkpoint_every=5), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "5"]
  assert not (workdir / "checkpoints_corrupt").exists()


# --- NaN at the command line ---------------------------------------------------------------


def test_nan_at_the_cli_is_one_line_exit_3_and_keeps_checkpoints(tmp_path, monkeypatch, capfd):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  workdir = tmp_path / "run"

  def cli(total_steps):
    return run_cli(_flags(total_steps=total_steps, checkpoint_every=5), capfd, workdir=workdir)

  code, err = cli(5)
  assert code == 0, err[-3000:]
  before = tree_digest(workdir / "checkpoints")
  real = train.make_train_step

  def make(*args, **kwargs):   # the loss of step 8 becomes NaN
    step = real(*args, **kwargs)

    def wrapped(state, *rest):
      new, metrics = step(state, *rest)
      if int(new.step) == 8:
        metrics = dict(metrics, loss=np.float32(np.nan), finite=np.bool_(False))
      return new, metrics
    return wrapped

  monkeypatch.setattr(train, "make_train_step", make)
  code, err = cli(20)
  assert code == 3
  lines = [l for l in err.splitlines() if l.startswith("merlin_jax:")]
  assert lines == [err.strip().splitlines()[-1]]
  assert lines[0].startswith("merlin_jax: error: non-finite value at step 8 in loss")
  assert "last good checkpoint: step 5" in lines[0]
  assert "Traceback" not in err
  assert tree_digest(workdir / "checkpoints") == before


# --- provenance ------------------------------------------------------------------------------


def test_provenance_is_recorded_per_start(tmp_path, monkeypatch):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")
  train.train_and_evaluate(_config(total_steps=2, checkpoint_every=2), str(tmp_path))
  train.train_and_evaluate(_config(total_steps=4, checkpoint_every=2), str(tmp_path))  # resume
  records = provenance.read(tmp_path)
  assert [r["start_step"] for r in records] == [0, 2]
  rec = records[-1]
  assert rec["config"]["method"] == "joint" and rec["config"]["total_steps"] == 4
  assert rec["config"]["inner"]["steps"] == 3 and rec["config"]["data"]["target"]["name"] == "synthetic"
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
              "numpy"):
    assert rec["packages"][pkg], pkg
  import jax
  assert rec["packages"]["jax"] == jax.__version__
  assert rec["process_count"] == 1 and rec["device_count"] == len(jax.devices())
  assert rec["devices"] == [str(d) for d in jax.devices()]
  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
  if not head:
    assert rec["git_commit"] == "unknown"
    return
  # The commit then (others may have committed since): a commit of this checkout's history.
  assert len(rec["git_commit"]) == 40 and isinstance(rec["git_dirty"], bool)
  assert subprocess.run(["git", "-C", ROOT, "merge-base", "--is-ancestor", rec["git_commit"],
                         "HEAD"]).returncode == 0


def test_provenance_outside_a_git_checkout(monkeypatch, tmp_path):
  monkeypatch.setattr(provenance, "_PACKAGE_DIR", str(tmp_path))
  assert provenance.git_info() == {"git_commit": "unknown", "git_dirty": None}
