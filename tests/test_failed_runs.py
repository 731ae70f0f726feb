"""A sweep survives one failed run, and every gain carries its interval (issue 31).

compare / the suite / the target-size sweep record a diverged run as a row of their table,
go on with the others, write the table, and exit 3 with one line naming the failed runs;
a rerun retries only those.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from merlin_jax import errors
from merlin_jax.config_base import load_config
from merlin_jax.experiments import intervals, selection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.py")
DIVERGED = ("non-finite value at step 8 in bss_penalty, grad_norm, loss; stopped without "
            "saving it (last good checkpoint: step 5, kept); rerun with a lower optimizer.lr")


def test_paired_interval_is_the_student_t_interval_of_the_seedwise_differences():
  acc = [0.80, 0.84, 0.83]
  base = [0.78, 0.80, 0.82]
  d = np.array(acc) - np.array(base)                              # 0.02, 0.04, 0.01
  iv = intervals.paired_interval(acc, base)
  half = 4.302652729911275 * np.std(d, ddof=1) / np.sqrt(3)      # t_{0.975, 2}
  assert iv["mean"] == pytest.approx(d.mean()) and iv["n"] == 3
  assert (iv["lo"], iv["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
  assert iv["tie"] is True   # -0.0 .. 0.07: the interval covers zero with 3 seeds
  assert intervals.format_interval(iv).endswith("tie")
  clear = intervals.paired_interval([0.90, 0.91, 0.92], [0.80, 0.80, 0.81])
  assert clear["tie"] is False and clear["lo"] > 0
  assert "tie" not in intervals.format_interval(clear)
  # Recomputed from a recorded mean and sample std (the tables' stored summaries).
  assert intervals.interval_from_summary(iv["mean"], iv["std"], 3)["hi"] == pytest.approx(iv["hi"])
  assert intervals.paired_interval([0.9], [0.8])["lo"] is None   # one seed: no interval


def test_a_diverged_run_is_a_row_and_the_others_go_on(tmp_path, monkeypatch):
  """With a fake trainer: bss diverges on its default setting (seed 1) and its eta=0.01
  candidate on the tuning seed; l2sp and finetune finish. Nothing is raised."""
  calls = []

  def fake_run_one(base, method, seed, setting, workdir, pretrained_path=None,
                   run_missing=True):
    name = selection._setting_name(setting)
    calls.append((method, name, seed))
    if method == "bss" and (name == "bss.eta=0.01" or seed == 1):
      raise errors.NonFiniteLossError(DIVERGED)
    if method == "l2sp" and name == "alpha=5":
      raise RuntimeError("XLA ran out of memory\nsecond line")
    val = {"default": 0.5, "alpha=5": 0.9, "bss.eta=0.01": 0.9}[name]
    return {"best_target_val_accuracy": val,
            "target_test_accuracy": {"finetune": 0.7, "l2sp": 0.72, "bss": 0.75}[method]
            + 0.01 * seed}

  monkeypatch.setattr(selection, "run_one", fake_run_one)
  monkeypatch.setattr(selection, "pretrained_start", lambda *a, **k: None)
  rows = selection.compare(load_config(SYNTHETIC), str(tmp_path), ["finetune", "bss", "l2sp"],
                           [0, 1, 2], {"bss": [{"bss.eta": 0.01}], "l2sp": [{"alpha": 5}]},
                           tune_seeds=[0])
  ft, bss, l2sp = rows
  assert not ft["failed"] and ft["failures"] == []
  # bss: the failed candidate is out of the choice, the chosen default failed on seed 1.
  assert bss["grid_failed"] == ["bss.eta=0.01"] and bss["setting"] == "default"
  assert bss["failed"] and bss["target_test_mean"] is None
  assert bss["target_test"][1] is None and bss["target_test"][0] == pytest.approx(0.75)
  assert [f["run"] for f in bss["failures"]] == ["bss/bss.eta=0.01/seed_0",
                                                 "bss/default/seed_1"]
  assert bss["failures"][1]["reason"] == (
      "diverged at step 8: non-finite bss_penalty, grad_norm, loss")
  # l2sp: its grid candidate crashed (any error, one line), the default went on.
  assert not l2sp["failed"] and l2sp["setting"] == "default"
  assert l2sp["failures"] == [{"run": "l2sp/alpha=5/seed_0",
                               "reason": "failed: RuntimeError: XLA ran out of memory second line"}]
  # Every run was tried once (no retry within one invocation); l2sp ran after bss failed.
  assert len(calls) == len(set(calls)) and ("l2sp", "default", 2) in calls
  table = selection.markdown_table(rows)
  assert "| bss | failed: bss/default/seed_1: diverged at step 8" in table
  assert "default; bss.eta=0.01: failed" in table
  line = [ln for ln in table.splitlines() if ln.startswith("| l2sp |")][0]
  iv = intervals.paired_interval(l2sp["target_test"], ft["target_test"])
  assert intervals.format_interval(iv) in line and "Student t-interval" in table
  assert selection.failed_runs(rows) == [
      "bss/bss.eta=0.01/seed_0 (diverged at step 8: non-finite bss_penalty, grad_norm, loss)",
      "bss/default/seed_1 (diverged at step 8: non-finite bss_penalty, grad_norm, loss)",
      "l2sp/alpha=5/seed_0 (failed: RuntimeError: XLA ran out of memory second line)"]


def test_a_failed_pretrain_run_fails_its_two_stage_runs_on_that_seed_only(tmp_path, monkeypatch):
  def fake_start(base, root, seed, run_missing=True):
    if seed == 1:
      raise errors.NonFiniteLossError("non-finite value at step 3 in loss; stopped")
    return None

  monkeypatch.setattr(selection, "pretrained_start", fake_start)
  monkeypatch.setattr(selection, "run_one", lambda *a, **k: {
      "best_target_val_accuracy": 0.5, "target_test_accuracy": 0.5})
  rows = selection.compare(load_config(SYNTHETIC), str(tmp_path), ["finetune", "target_only"],
                           [0, 1], {})
  ft, to = rows
  assert ft["failed"] and ft["target_test"] == [0.5, None] and not to["failed"]
  assert ft["failures"] == [{"run": "pretrain/default/seed_1",
                             "reason": "diverged at step 3: non-finite loss"}]


def test_bad_input_and_a_stop_still_end_the_comparison(tmp_path, monkeypatch):
  def fake_run_one(*a, **k):
    raise errors.ConfigError("bss.eta", "must be >= 0, got -1")

  monkeypatch.setattr(selection, "run_one", fake_run_one)
  with pytest.raises(errors.ConfigError):
    selection.compare(load_config(SYNTHETIC), str(tmp_path), ["target_only"], [0], {})


def test_a_real_divergence_is_recorded_and_a_rerun_retries_only_it(tmp_path, monkeypatch):
  """The real trainer on the synthetic pair: the grid setting with an absurd lr diverges
  (the trainer's NonFiniteLossError, its one line parsed) and leaves no final record, the
  finished default is read back and chosen. A rerun retries the failed run only."""
  from merlin_jax import train
  base = load_config(SYNTHETIC)
  with base.unlocked():
    base.total_steps, base.eval.every, base.checkpoint_every, base.log_every = 2, 2, 2, 1
  done = tmp_path / "target_only" / "default" / "seed_0"   # a finished run: read back
  done.mkdir(parents=True)
  (done / "metrics.jsonl").write_text(json.dumps(
      {"final": True, "best_target_val_accuracy": 0.5, "target_test_accuracy": 0.6}) + "\n")
  grid = {"target_only": [{"optimizer.lr": 1e30}]}
  (row,) = selection.compare(base, str(tmp_path), ["target_only"], [0], grid)
  assert row["setting"] == "default" and not row["failed"] and row["target_test"] == [0.6]
  assert row["grid_failed"] == ["optimizer.lr=1e+30"]
  (failure,) = row["failures"]
  assert failure["run"] == "target_only/optimizer.lr=1e+30/seed_0"
  assert failure["reason"].startswith("diverged at step ") and "non-finite" in failure["reason"]
  assert selection.finished(str(tmp_path / failure["run"])) is None
  trained = []

  def fake_train(config, workdir):   # the rerun: which runs train again
    trained.append(os.path.relpath(workdir, tmp_path))
    raise errors.NonFiniteLossError("non-finite value at step 1 in loss; stopped")

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  (again,) = selection.compare(base, str(tmp_path), ["target_only"], [0], grid)
  assert trained == [failure["run"]] and again["target_test"] == [0.6]


# The compare command line with a trainer forced to diverge (a fake: no compilation, so the
# test is about the command line's contract, in its own process as a user runs it).
_FAKE_CLI = """
import sys
from absl import app
from merlin_jax import compare, errors
from merlin_jax.experiments import selection

def fake_run_one(base, method, seed, setting, workdir, pretrained_path=None, run_missing=True):
  if method == "bss":
    raise errors.NonFiniteLossError(%r)
  return {"best_target_val_accuracy": 0.5, "target_test_accuracy": 0.7 + 0.01 * seed}

selection.run_one = fake_run_one
selection.pretrained_start = lambda *a, **k: None
sys.argv = ["merlin_jax.compare"] + sys.argv[1:]
app.run(compare.main, flags_parser=compare.parse_flags)
""" % DIVERGED


def _cli(tmp_path, *extra):
  return subprocess.run(
      [sys.executable, "-c", _FAKE_CLI, f"--config={SYNTHETIC}", f"--workdir={tmp_path}",
       "--methods=finetune,bss,l2sp", "--seeds=0,1", f"--out={tmp_path}/table.md", *extra],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def test_compare_cli_writes_the_table_and_exits_3_naming_the_failed_runs(tmp_path):
  out = _cli(tmp_path)
  assert out.returncode == selection.FAILED_RUNS_EXIT_CODE, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last == ("merlin_jax.compare: 2 run(s) failed (the table marks them; rerun the same "
                  "command to retry only those): bss/default/seed_0 (diverged at step 8: "
                  "non-finite bss_penalty, grad_norm, loss); bss/default/seed_1 (diverged at "
                  "step 8: non-finite bss_penalty, grad_norm, loss)")
  table = (tmp_path / "table.md").read_text()
  assert "| bss | failed: bss/default/seed_0: diverged at step 8" in table
  assert "| l2sp | 70.50 ± 0.50 | +0.00 [+0.00, +0.00] tie |" in table   # ran after bss
  rows = json.loads((tmp_path / "table.json").read_text())
  assert [r["failed"] for r in rows] == [False, True, False]


def test_verbose_logs_the_traceback_of_a_failed_run(tmp_path, monkeypatch, caplog):
  _fake_trainer(monkeypatch)
  for verbose in (False, True):
    caplog.clear()
    selection.compare(load_config(SYNTHETIC), str(tmp_path), ["bss"], [0], {}, verbose=verbose)
    (record,) = [r for r in caplog.records if "diverged at step 8" in r.getMessage()]
    assert bool(record.exc_info) == verbose


def _fake_trainer(monkeypatch, diverging=("bss",)):
  """run_one / pretrained_start that write what the tables read (metrics.jsonl), and raise
  the trainer's NonFiniteLossError for the methods in `diverging`."""
  def write(workdir, record):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps(dict(record, final=True)) + "\n")
    return record

  def fake_run_one(base, method, seed, setting, workdir, pretrained_path=None,
                   run_missing=True):
    if method in diverging:
      raise errors.NonFiniteLossError(DIVERGED)
    acc = {"finetune": 0.70, "l2sp": 0.75}.get(method, 0.6) + 0.01 * seed * (method == "l2sp")
    return write(workdir, {"best_target_val_accuracy": 0.5, "target_test_accuracy": acc,
                           "target_val_accuracy": 0.5, "step": 3, "train_seconds": 1.0,
                           "selected_step": 3})

  def fake_start(base, root, seed, run_missing=True):
    write(os.path.join(root, "pretrain", "default", f"seed_{seed}"),
          {"train_seconds": 2.0, "step": 3})

  monkeypatch.setattr(selection, "run_one", fake_run_one)
  monkeypatch.setattr(selection, "pretrained_start", fake_start)


def test_the_suite_goes_on_past_a_diverged_run_and_names_it(tmp_path, monkeypatch):
  from merlin_jax.experiments import suite_lib
  _fake_trainer(monkeypatch)
  failures = []
  text = suite_lib.run_suite([SYNTHETIC], ["finetune", "bss", "l2sp"], [0, 1, 2], 3, 3, [],
                             str(tmp_path), failures=failures)
  assert "| bss | failed: bss/default/seed_0: diverged at step 8" in text
  assert "| l2sp | 76.00 ± 0.82 | +6.00 [+3.52, +8.48] |" in text   # after bss; not a tie
  assert failures == [f"synthetic/bss/default/seed_{s} (diverged at step 8: non-finite "
                      "bss_penalty, grad_norm, loss)" for s in (0, 1, 2)]


def test_the_target_size_sweep_goes_on_past_a_diverged_run_and_names_it(tmp_path, monkeypatch):
  from merlin_jax.experiments import target_size_lib
  _fake_trainer(monkeypatch)
  failures = []
  records = target_size_lib.sweep([SYNTHETIC], [12, 30], ["finetune", "bss", "l2sp"],
                                  [0, 1, 2], 3, 3, [], str(tmp_path), failures=failures)
  assert [(r["num_train"], r["method"], r["failed"]) for r in records] == [
      (n, m, m == "bss") for n in (12, 30) for m in ("finetune", "bss", "l2sp")]
  l2sp = records[2]
  iv = intervals.paired_interval([0.75, 0.76, 0.77], [0.70, 0.70, 0.70])
  assert (l2sp["gain_mean"], l2sp["gain_lo"], l2sp["gain_hi"]) == pytest.approx(
      (iv["mean"], iv["lo"], iv["hi"])) and l2sp["gain_tie"] is False
  table = target_size_lib.markdown(records)
  assert "| synthetic | 12 | bss | failed: bss/default/seed_0: diverged at step 8" in table
  assert len(failures) == 6 and failures[0].startswith("synthetic/n12/bss/default/seed_0 (")
  target_size_lib.plot(records, str(tmp_path / "plot.png"))   # the failed runs: no point
  assert (tmp_path / "plot.png").stat().st_size > 1000


def test_a_pair_without_prepared_data_stops_the_suite_and_the_sweep_before_any_run(
    tmp_path, monkeypatch):
  """The pair listed second has no prepared data (an empty data dir): its DataError, with the
  command that prepares it, comes before the first pair's first run, not an hour in."""
  from merlin_jax.experiments import suite_lib, target_size_lib
  ran = []
  monkeypatch.setattr(selection, "run_one", lambda *a, **k: ran.append(a) or {})
  unprepared = tmp_path / "unprepared.py"
  unprepared.write_text(
      "from merlin_jax.config_base import load_config\n"
      "def get_config(arg=None):\n"
      f"  c = load_config({os.path.join(ROOT, 'configs', 'fashion_digits.py')!r})\n"
      f"  c.data.data_dir = {str(tmp_path / 'empty')!r}\n"
      "  return c\n")
  for run in (lambda: suite_lib.run_suite([SYNTHETIC, str(unprepared)], ["finetune"], [0], 3,
                                          3, [], str(tmp_path / "suite")),
              lambda: target_size_lib.sweep([SYNTHETIC, str(unprepared)], [50], ["finetune"],
                                            [0], 3, 3, [], str(tmp_path / "sweep"))):
    with pytest.raises(errors.DataError, match="fashion_mnist_local' is not prepared.*"
                       "merlin_jax.data.prepare fashion_mnist_local"):
      run()
  assert ran == []
