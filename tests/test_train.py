"""The training program end to end on a tiny synthetic pair (merlin_jax/data/synthetic.py)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from merlin_jax import train
from merlin_jax.errors import ConfigError, NonFiniteLossError, UserError
from merlin_jax.runtime.metrics import read_jsonl
from merlin_jax.data.synthetic import load_synthetic
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch):
  from merlin_jax.data import pipeline
  monkeypatch.setattr(pipeline, "load_transfer_data", load_synthetic)


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r]


@pytest.mark.parametrize("method", ["merlin", "joint", "target_only", "l2sp", "merlin_ft"])
def test_methods_run_and_report_test_accuracy(tmp_path, method):
  final = train.train_and_evaluate(tiny_config(method), str(tmp_path))
  last = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))[-1]
  assert last["final"] and last["step"] == 10
  assert 0.0 <= last["target_test_accuracy"] <= 1.0
  assert last["target_test_accuracy"] == pytest.approx(final["target_test_accuracy"])
  assert os.path.exists(tmp_path / "model.safetensors")
  assert os.listdir(tmp_path / "checkpoints")
  if method in ("l2sp", "merlin_ft"):  # two-stage: pretrain ran in the workdir first
    assert (tmp_path / "pretrain" / "model.safetensors").exists()
  losses = [l for _, l in _losses(tmp_path)]
  assert len(losses) == 10 and np.all(np.isfinite(losses))


def test_training_reduces_loss_and_learns_target(tmp_path):
  cfg = tiny_config("joint", total_steps=60, **{"eval.every": 20})
  final = train.train_and_evaluate(cfg, str(tmp_path))
  losses = [l for _, l in _losses(tmp_path)]
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
  assert final["target_test_accuracy"] > 0.6   # 3 classes: chance is 1/3


def test_resume_matches_uninterrupted_run(tmp_path):
  full = tmp_path / "full"
  train.train_and_evaluate(tiny_config("merlin"), str(full))
  part = tmp_path / "part"
  train.train_and_evaluate(tiny_config("merlin", total_steps=5), str(part))
  train.train_and_evaluate(tiny_config("merlin"), str(part))  # resumes at 5
  assert _losses(part) == _losses(full)
  a, b = train.final_metrics(str(full)), train.final_metrics(str(part))
  assert a["target_test_accuracy"] == b["target_test_accuracy"]


def test_a_workdir_written_before_a_key_existed_still_resumes(tmp_path):
  """config.json without keys added to the schema later: at their defaults they change
  nothing, so the run resumes exactly; at another value it is a different run."""
  full = tmp_path / "full"
  train.train_and_evaluate(tiny_config("merlin"), str(full))
  part = tmp_path / "part"
  train.train_and_evaluate(tiny_config("merlin", total_steps=5), str(part))
  path = part / "config.json"
  saved = json.loads(path.read_text())
  for key in ("data.kind", "model.hf_dir", "rho"):
    del saved[key]
  path.write_text(json.dumps(saved))
  with pytest.raises(UserError, match="different config.*rho"):
    train.train_and_evaluate(tiny_config("merlin", rho=0.5), str(part))
  path.write_text(json.dumps(saved))
  train.train_and_evaluate(tiny_config("merlin"), str(part))  # resumes at 5
  assert _losses(part) == _losses(full)
  assert "data.kind" in json.loads(path.read_text())   # migrated


def test_resume_refuses_a_different_config(tmp_path):
  train.train_and_evaluate(tiny_config("merlin", total_steps=2), str(tmp_path))
  with pytest.raises(UserError, match="different config.*rho"):
    train.train_and_evaluate(tiny_config("merlin", rho=0.5), str(tmp_path))


def test_model_selection_uses_target_validation(tmp_path):
  train.train_and_evaluate(tiny_config("joint"), str(tmp_path))
  records = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  evals = {r["step"]: r["target_val_accuracy"] for r in records if "target_val_accuracy" in r}
  final = records[-1]
  best = max(evals.values())
  assert final["best_target_val_accuracy"] == pytest.approx(best, abs=1e-6)
  assert evals[final["selected_step"]] == best
  # Ties go to the earliest step reaching the best accuracy.
  assert final["selected_step"] == min(s for s, a in evals.items() if a == best)


@pytest.mark.parametrize("override, key", [
    ({"method": "merlinn"}, "method"),
    ({"inner.kind": "newton"}, "inner.kind"),
    ({"inner.steps": -1}, "inner.steps"),
    ({"inner.lr": 0.0}, "inner.lr"),
    ({"rho": -1.0}, "rho"),
    ({"split.train_size": 100}, "split"),
    ({"alpha": 1.5, "method": "joint"}, "alpha"),
])
def test_bad_config_names_the_key(tmp_path, override, key):
  with pytest.raises(ConfigError) as err:
    train.train_and_evaluate(tiny_config(**override), str(tmp_path))
  assert f"config.{key}" in str(err.value)


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  with pytest.raises(UserError, match="is a file"):
    train.train_and_evaluate(tiny_config(), str(f))


def test_nan_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
  cfg = tiny_config("joint", total_steps=30, **{"optimizer.name": "sgd",
                                                         "optimizer.lr": 1e30})
  with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
    train.train_and_evaluate(cfg, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  # Whatever was saved is finite (the bad state was never written).
  if steps:
    from merlin_jax.runtime import checkpointing
    import orbax.checkpoint as ocp
    m = checkpointing.make_manager(str(tmp_path / "checkpoints"), 2)
    restored = m.restore(steps[-1], args=ocp.args.StandardRestore())
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(restored)]
    assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f")


_SUBPROCESS = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from merlin_jax.data import pipeline
    from merlin_jax.data.synthetic import load_synthetic
    from tests.helpers import tiny_config
    pipeline.load_transfer_data = load_synthetic
    from merlin_jax import train
    import jax
    cfg = tiny_config({method!r}, **{overrides!r})
    train.train_and_evaluate(cfg, {workdir!r})
    print("DEVICES", len(jax.devices()))
""")


def _run_devices(n, workdir, method="merlin", **overrides):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu")
  code = _SUBPROCESS.format(root=ROOT, method=method, overrides=overrides, workdir=str(workdir))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"DEVICES {n}" in out.stdout
  return _losses(workdir)


def test_same_losses_on_one_and_two_devices(tmp_path):
  one = _run_devices(1, tmp_path / "one", total_steps=6)
  two = _run_devices(2, tmp_path / "two", total_steps=6)
  assert [s for s, _ in one] == [s for s, _ in two]
  np.testing.assert_allclose([l for _, l in one], [l for _, l in two], rtol=2e-4)


def test_two_stage_methods_start_from_the_end_of_pretraining(tmp_path):
  """Pre-training's product is phi_pre at the end of source training, not a model chosen on
  the target (with a weak probe, step 0 could win and fine-tuning would start at random)."""
  from merlin_jax.runtime import checkpointing
  pre = tmp_path / "pre"
  final = train.train_and_evaluate(tiny_config("pretrain", total_steps=6), str(pre))
  assert final["selected_step"] == 6
  exported = checkpointing.load_safetensors(str(pre / "model.safetensors"))
  init = train.train_and_evaluate(tiny_config("pretrain", total_steps=0),
                                  str(tmp_path / "init"))
  del init
  at_init = checkpointing.load_safetensors(str(tmp_path / "init" / "model.safetensors"))
  moved = [k for k in exported if k.startswith("params/backbone")
           and not np.array_equal(exported[k], at_init[k])]
  assert moved  # the exported backbone is the trained one
  ft = tmp_path / "ft"
  train.train_and_evaluate(tiny_config("finetune", **{"pretrained.path": str(pre)}),
                           str(ft))
  scratch = tmp_path / "scratch"
  train.train_and_evaluate(tiny_config("target_only"), str(scratch))
  assert _losses(ft)[0][1] != _losses(scratch)[0][1]


def test_train_records_the_process_count_and_checks_it_on_resume(tmp_path, monkeypatch):
  """Every checkpoint records the process count; a resume hands it to the source's
  `check_resume` (a tfrecord-streamed source refuses another count: test_streamed_resume)."""
  from merlin_jax.runtime import checkpointing
  from merlin_jax.data.synthetic import SyntheticSource
  train.train_and_evaluate(tiny_config("joint", total_steps=2), str(tmp_path))
  meta = checkpointing.step_metadata(str(tmp_path / checkpointing.CHECKPOINTS), 2)
  assert meta["process_count"] == 1
  seen = []
  monkeypatch.setattr(SyntheticSource, "check_resume", seen.append, raising=False)
  train.train_and_evaluate(tiny_config("joint", total_steps=2), str(tmp_path))
  assert seen == [1]


def test_pretraining_is_a_separate_stage_with_its_own_lock_and_log_line(tmp_path, monkeypatch,
                                                                        caplog):
  """A two-stage method without pretrained.path: stage 1 (pretrain, in WORKDIR/pretrain)
  holds its own lock and releases it before stage 2 takes the workdir's; each stage says so
  in the log; a rerun reads stage 1 back."""
  import contextlib
  import logging
  from merlin_jax.runtime import workdir as workdir_lib
  events, real_lock = [], workdir_lib.lock

  @contextlib.contextmanager
  def recording_lock(workdir):
    events.append(("take", os.path.relpath(workdir, tmp_path)))
    with real_lock(workdir):
      yield
    events.append(("free", os.path.relpath(workdir, tmp_path)))

  monkeypatch.setattr(workdir_lib, "lock", recording_lock)
  caplog.set_level(logging.INFO)
  config = tiny_config("finetune", total_steps=2, **{"pretrained.steps": 2})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert events == [("take", "run/pretrain"), ("free", "run/pretrain"),
                    ("take", "run"), ("free", "run")]
  text = caplog.text
  assert "stage 1/2 (pretrain): 2 steps in" in text
  assert text.index("stage 1/2") < text.index("stage 2/2 (finetune)")
  events.clear()
  caplog.clear()
  train.train_and_evaluate(config, str(tmp_path / "run"))   # finished: both read back
  assert "stage 1/2 (pretrain): finished in" in caplog.text
  assert ("take", "run/pretrain") not in events
