"""One workdir holds one run, a resume cannot change what is computed, and the files beside
the checkpoints are not trusted blindly (issue #19). In-process, on the synthetic pair;
the subprocess cases (kill -9, two runs at once, Ctrl-C) are in tests/test_reliability.py.
"""

import fcntl
import json
import os
import shutil

import numpy as np
import pytest

from merlin_jax import train
from merlin_jax.runtime import checkpointing, workdir as workdir_lib
from merlin_jax.errors import ConfigError, NonFiniteLossError, UserError
from merlin_jax.runtime.metrics import read_jsonl
from tests.helpers import TIMING_KEYS, flip_one_bit, tiny_config, tree_digest


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")


def _cfg(method="joint", **overrides):
  return tiny_config(method, **{"checkpoint_every": 5, **overrides})


def _records(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 10-step joint run."""
  workdir = tmp_path_factory.mktemp("reference")
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  try:
    train.train_and_evaluate(_cfg(), str(workdir))
  finally:
    os.environ.pop("MERLIN_JAX_TENSORBOARD")
  return workdir


class _Killed(BaseException):
  """Stands for kill -9: nothing after it runs (no except/finally of ours catches it)."""


def _die_after(monkeypatch, step):
  real = train.make_train_step

  def make(*args, **kwargs):
    fn = real(*args, **kwargs)

    def wrapped(state, *rest):
      new, metrics = fn(state, *rest)
      if int(new.step) == step:
        raise _Killed()
      return new, metrics
    return wrapped
  monkeypatch.setattr(train, "make_train_step", make)


# --- the lock ------------------------------------------------------------------------------


def test_a_held_workdir_is_refused_with_its_owner_and_freed_when_the_holder_ends(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    workdir_lib.commit(_cfg(), str(tmp_path))   # records who holds it
    with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()} on host"):
      train.train_and_evaluate(_cfg(), str(tmp_path))
  # Released: a run now goes through (the kernel also releases it when a holder dies).
  train.train_and_evaluate(_cfg(total_steps=1), str(tmp_path))
  fd = os.open(tmp_path, os.O_RDONLY)   # and the finished run released it
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  os.close(fd)


# --- what a resume may change ----------------------------------------------------------


def test_the_l2sp_anchor_cannot_change_on_resume(tmp_path):
  pre = tmp_path / "pre"
  train.train_and_evaluate(_cfg("pretrain", total_steps=2), str(pre))
  weights = pre / "model.safetensors"
  moved = tmp_path / "moved.safetensors"
  shutil.copy(weights, moved)
  other = tmp_path / "other.safetensors"
  from safetensors.numpy import save_file
  flat = checkpointing.load_safetensors(str(weights))
  key = next(k for k in flat if k.startswith("params/backbone"))
  flat[key] = flat[key] + np.float32(0.01)
  save_file(flat, str(other))
  run = tmp_path / "run"
  train.train_and_evaluate(_cfg("l2sp", total_steps=5, **{"pretrained.path": str(weights)}),
                           str(run))
  with pytest.raises(ConfigError, match="config.pretrained.path: the weights at .*other.safetensors"
                                        ".* differ from those the run .* started from"):
    train.train_and_evaluate(_cfg("l2sp", **{"pretrained.path": str(other)}), str(run))
  # The same weights somewhere else: pretrained.path may move.
  train.train_and_evaluate(_cfg("l2sp", **{"pretrained.path": str(moved)}), str(run))
  full = tmp_path / "full"
  train.train_and_evaluate(_cfg("l2sp", **{"pretrained.path": str(weights)}), str(full))
  assert _records(run) == _records(full)


def test_total_steps_of_a_decaying_schedule_cannot_change_on_resume(tmp_path):
  cosine = {"optimizer.schedule": "cosine"}
  train.train_and_evaluate(_cfg(total_steps=5, **cosine), str(tmp_path))
  with pytest.raises(UserError, match="total_steps: 5 there, 10 now.*schedule spans"):
    train.train_and_evaluate(_cfg(total_steps=10, **cosine), str(tmp_path))
  train.train_and_evaluate(_cfg(total_steps=10), str(tmp_path / "constant"))  # allowed there


def test_the_identity_is_inside_the_checkpoints(tmp_path, reference, caplog):
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  os.remove(run / "config.json")
  with pytest.raises(UserError, match=r"\(seed: 0 there, 1 now\) according to its checkpoints"):
    train.train_and_evaluate(_cfg(seed=1), str(run))
  assert not (run / "config.json").exists()      # exit 2 wrote nothing
  (run / "config.json").write_text("{garbage")
  with pytest.raises(UserError, match=r"\(seed: 0 there, 1 now\)"):
    train.train_and_evaluate(_cfg(seed=1), str(run))
  caplog.set_level("WARNING")
  train.train_and_evaluate(_cfg(), str(run))    # the same config resumes, config.json repaired
  assert "config.json was unreadable" in caplog.text
  assert json.loads((run / "config.json").read_text())["seed"] == 0
  assert _records(run) == _records(reference)


def test_a_damaged_identity_inside_a_checkpoint_is_not_trusted(tmp_path, reference, caplog):
  """Metadata that still parses as JSON after damage (here: another seed written into the
  newest checkpoint's record) fails its own checksum and is ignored: the older checkpoint
  (and config.json) say what the run is, and the same config resumes exactly. (This is
  what made tests/test_reliability.py's all-checkpoints-garbled case flaky: a garbled
  metadata file that stayed valid JSON passed for another config.)"""
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  newest = max(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit())
  path = run / "checkpoints" / str(newest) / "_CHECKPOINT_METADATA"
  meta = json.loads(path.read_text())
  assert meta["custom_metadata"]["config"]["seed"] == 0
  meta["custom_metadata"]["config"]["seed"] = 1
  path.write_text(json.dumps(meta))
  assert checkpointing.step_metadata(str(run / "checkpoints"), newest) == {}
  caplog.set_level("WARNING")
  with pytest.raises(UserError, match=r"\(seed: 0 there, 1 now\)"):
    train.train_and_evaluate(_cfg(seed=1), str(run))
  assert "changed on disk since it was saved" in caplog.text
  train.train_and_evaluate(_cfg(), str(run))   # the same config: resumes exactly
  assert _records(run) == _records(reference)


def test_checkpoints_without_any_identity_are_refused(tmp_path, reference):
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  os.remove(run / "config.json")
  for step in os.listdir(run / "checkpoints"):   # as an older version wrote them
    meta = run / "checkpoints" / step / "_CHECKPOINT_METADATA"
    data = json.loads(meta.read_text())
    data["custom_metadata"] = {}
    meta.write_text(json.dumps(data))
  with pytest.raises(UserError, match="holds checkpoints but no config.json"):
    train.train_and_evaluate(_cfg(), str(run))


def test_deleting_the_digest_file_does_not_disable_the_checksum(tmp_path, reference, caplog):
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  os.remove(run / checkpointing.DIGESTS)
  flip_one_bit(str(run / "checkpoints" / "10"))
  caplog.set_level("WARNING")
  train.train_and_evaluate(_cfg(), str(run))
  assert "checksum mismatch" in caplog.text and "resuming from step 5" in caplog.text
  assert _records(run) == _records(reference)


# --- metrics.jsonl ---------------------------------------------------------------------------


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_records(tmp_path, reference,
                                                                        monkeypatch):
  with monkeypatch.context() as m:
    _die_after(m, 3)
    with pytest.raises(_Killed):
      train.train_and_evaluate(_cfg(), str(tmp_path))
  assert [r["step"] for r in _records(tmp_path)][:1] == [0]   # the step-0 eval was written
  assert not os.listdir(tmp_path / "checkpoints")
  train.train_and_evaluate(_cfg(), str(tmp_path))
  assert _records(tmp_path) == _records(reference)


@pytest.mark.parametrize("damage", ["deleted", "cut", "garbled_line"])
def test_a_damaged_metrics_file_is_repaired_from_the_checkpoint(tmp_path, reference,
                                                                monkeypatch, caplog, damage):
  with monkeypatch.context() as m:
    _die_after(m, 8)   # checkpoint 5 holds the records of steps 0..5
    with pytest.raises(_Killed):
      train.train_and_evaluate(_cfg(), str(tmp_path))
  path = tmp_path / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  if damage == "deleted":
    os.remove(path)
  elif damage == "cut":
    path.write_text("".join(lines[3:]))
  else:   # one record made unreadable
    lines[2] = lines[2][:10] + "#" + lines[2][11:]
    path.write_text("".join(lines))
  caplog.set_level("WARNING")
  train.train_and_evaluate(_cfg(), str(tmp_path))
  assert "rewritten from checkpoint 5" in caplog.text
  assert _records(tmp_path) == _records(reference)


# --- NaN advice -------------------------------------------------------------------------


def test_the_nan_advice_can_be_followed(tmp_path, monkeypatch):
  real = train.make_train_step

  def make(*args, **kwargs):   # the loss of step 7 becomes NaN
    fn = real(*args, **kwargs)

    def wrapped(state, *rest):
      new, metrics = fn(state, *rest)
      if int(new.step) == 7:
        metrics = dict(metrics, loss=np.float32(np.nan), finite=np.bool_(False))
      return new, metrics
    return wrapped

  with monkeypatch.context() as m:
    m.setattr(train, "make_train_step", make)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint: step 5, kept.* lower "
                                                 "optimizer.lr or inner.lr in a new --workdir"):
      train.train_and_evaluate(_cfg(), str(tmp_path / "run"))
  kept = tree_digest(tmp_path / "run" / "checkpoints")
  # What it says: a new workdir with a lower lr runs; the same workdir refuses, harmlessly.
  train.train_and_evaluate(_cfg(**{"optimizer.lr": 1e-4}), str(tmp_path / "new"))
  with pytest.raises(UserError, match="optimizer.lr"):
    train.train_and_evaluate(_cfg(**{"optimizer.lr": 1e-4}), str(tmp_path / "run"))
  assert tree_digest(tmp_path / "run" / "checkpoints") == kept
