"""Smoke test of the experiment suite and the compare runner on the tiny synthetic pair."""

import json
import os

import numpy as np
import pytest

from merlin_jax.config_base import load_config
from merlin_jax.experiments import selection, suite_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.py")


def test_parse_grid():
  grid = selection.parse_grid(["joint:alpha=0.2,0.8;rho=1", "merlin:inner.steps=3,5"])
  assert grid["joint"] == [{"alpha": 0.2, "rho": 1}, {"alpha": 0.8, "rho": 1}]
  assert grid["merlin"] == [{"inner.steps": 3}, {"inner.steps": 5}]
  # Several specs for one method are a union (one value at a time), not a product.
  union = selection.parse_grid(["merlin:rho=0.3,3", "merlin:inner.steps=5"])
  assert union["merlin"] == [{"rho": 0.3}, {"rho": 3}, {"inner.steps": 5}]


def test_candidates_put_the_config_first_and_drop_its_own_values():
  base = load_config(SYNTHETIC)
  settings = [{"rho": base.rho}, {"rho": 3.0}, {"inner.steps": base.inner.steps, "rho": 3.0},
              {"split.train_size": 7, "split.val_size": base.split.val_size}]
  cands = selection.candidates(base, settings)
  assert list(cands) == ["default", "rho=3.0", "split.train_size=7"]
  assert cands["default"] == {} and cands["split.train_size=7"] == {"split.train_size": 7}


def test_grid_runs_on_tune_seeds_and_the_choice_on_all_seeds(tmp_path, monkeypatch):
  """The protocol, with a fake trainer: val picks the setting, test never does."""
  calls = []
  val = {"default": 0.5, "rho=3": 0.9, "rho=0.3": 0.9}   # tie: the earlier candidate wins
  test = {"default": 0.99, "rho=3": 0.1, "rho=0.3": 0.2}  # would flip the choice if used

  def fake_run_one(base, method, seed, setting, workdir, pretrained_path=None,
                   run_missing=True):
    name = selection._setting_name(setting)
    calls.append((name, seed))
    return {"best_target_val_accuracy": val[name], "target_test_accuracy": test[name] + seed}

  monkeypatch.setattr(selection, "run_one", fake_run_one)
  base = load_config(SYNTHETIC)
  (row,) = selection.compare(base, str(tmp_path), ["merlin"], [0, 1, 2],
                             selection.parse_grid(["merlin:rho=3,0.3"]), tune_seeds=[1])
  assert row["setting"] == "rho=3" and row["tune_seeds"] == [1]
  assert row["grid"] == {"default": 0.5, "rho=3": 0.9, "rho=0.3": 0.9}
  assert sorted(set(calls)) == sorted({("default", 1), ("rho=0.3", 1), ("rho=3", 0),
                                       ("rho=3", 1), ("rho=3", 2)})
  assert row["target_test"] == [0.1, 1.1, 2.1]


def test_a_tie_on_mean_validation_goes_to_the_earlier_candidate(tmp_path, monkeypatch):
  """Validation accuracies are float32 (0.91 is 0.9100000262...): the means of
  (0.90, 0.95, 0.91) and (0.91, 0.94, 0.91) differ in their last bits, which chose the later
  setting before the means were rounded."""
  val = {"default": (0.90, 0.95, 0.91), "rho=3": (0.91, 0.94, 0.91)}
  assert (np.mean([float(np.float32(v)) for v in val["rho=3"]])
          > np.mean([float(np.float32(v)) for v in val["default"]]))   # what used to win

  def fake_run_one(base, method, seed, setting, workdir, pretrained_path=None,
                   run_missing=True):
    accuracy = float(np.float32(val[selection._setting_name(setting)][seed]))
    return {"best_target_val_accuracy": accuracy, "target_test_accuracy": 0.5}

  monkeypatch.setattr(selection, "run_one", fake_run_one)
  (row,) = selection.compare(load_config(SYNTHETIC), str(tmp_path), ["merlin"], [0, 1, 2],
                             selection.parse_grid(["merlin:rho=3"]))
  assert row["grid"] == {"default": 0.92, "rho=3": 0.92} and row["setting"] == "default"


def test_suite_writes_table_and_plot(tmp_path):
  workspace = tmp_path / "WS.md"
  workspace.write_text("# log\n\nkept text\n")
  pair = SYNTHETIC
  text = suite_lib.run_suite([pair], ["joint", "merlin"], [0, 1], steps=3, eval_every=2,
                             grid_specs=[], root=str(tmp_path / "runs"),
                             workspace=str(workspace), plots="plots")
  body = workspace.read_text()
  assert "kept text" in body and suite_lib.BEGIN in body and suite_lib.END in body
  for method in ("joint", "merlin"):
    assert f"| {method} |" in body
  assert "±" in body and (tmp_path / "plots" / "suite_synthetic.png").stat().st_size > 1000
  assert "--tune_seeds=`" in body   # tuned on all seeds: written, or a rerun would use seed 0
  assert sorted(os.listdir(tmp_path / "runs" / "synthetic" / "joint" / "default")) == [
      "seed_0", "seed_1"]
  first = json.load(open(tmp_path / "runs" / "synthetic" / "wall_minutes.json"))["minutes"]
  assert first > 0
  # Rerunning reuses finished runs, adds its own (short) time, and replaces (not
  # duplicates) the section.
  suite_lib.run_suite([pair], ["joint"], [0], steps=3, eval_every=2, grid_specs=[],
                      root=str(tmp_path / "runs"), workspace=str(workspace), plots="plots")
  assert workspace.read_text().count(suite_lib.BEGIN) == 1
  assert json.load(open(tmp_path / "runs" / "synthetic" / "wall_minutes.json"))["minutes"] > first
  assert text.startswith("Command:")


def test_compare_selects_on_validation(tmp_path):
  base = suite_lib.scaled(load_config(SYNTHETIC), 3, 2)
  rows = selection.compare(base, str(tmp_path), ["joint"], [0], selection.parse_grid(
      ["joint:alpha=0.1,0.9"]))
  (row,) = rows
  assert row["setting"] == max(row["grid"], key=row["grid"].get)
  final = json.loads(open(tmp_path / "joint" / row["setting"] / "seed_0" / "metrics.jsonl")
                     .readlines()[-1])
  assert row["target_test"] == [final["target_test_accuracy"]]


def test_two_stage_methods_share_one_pretrain_run_per_seed(tmp_path, monkeypatch):
  """compare's pre-training is train.pretrain_stage, at ROOT/pretrain/default/seed_<s>."""
  from merlin_jax import train
  pretrains, starts = [], []

  def fake_run_pretrain(config, pre_workdir):
    pretrains.append((config.seed, config.method, os.path.relpath(pre_workdir, tmp_path)))
    return os.path.join(pre_workdir, "model.safetensors")

  def fake_run_one(base, method, seed, setting, workdir, pretrained_path=None,
                   run_missing=True):
    starts.append((method, seed, pretrained_path and os.path.relpath(pretrained_path, tmp_path)))
    return {"best_target_val_accuracy": 0.5, "target_test_accuracy": 0.5}

  monkeypatch.setattr(train, "pretrain_stage", fake_run_pretrain)
  monkeypatch.setattr(selection, "run_one", fake_run_one)
  base = load_config(SYNTHETIC)
  selection.compare(base, str(tmp_path), ["joint", "finetune", "l2sp"], [0, 1], {})
  assert pretrains == [(0, "merlin", "pretrain/default/seed_0"),
                       (1, "merlin", "pretrain/default/seed_1")]
  assert starts == [("joint", 0, None), ("joint", 1, None)] + [
      (m, s, f"pretrain/default/seed_{s}/model.safetensors")
      for m in ("finetune", "l2sp") for s in (0, 1)]
  # A config that names its pre-trained weights starts there: no pretrain run.
  pretrains.clear(), starts.clear()
  base.pretrained.path = "/weights"
  selection.compare(base, str(tmp_path), ["finetune"], [0], {})
  assert pretrains == [] and starts == [("finetune", 0, None)]


def test_a_stop_during_a_runs_last_window_starts_no_further_run(tmp_path, monkeypatch):
  """A SIGTERM that lands while a run drains its last window lets that run finish (its
  step loop has ended); compare then starts no other run and raises Preempted, and the
  same call again reads the finished run back and goes on (fake trainer)."""
  from merlin_jax import errors, train
  from merlin_jax.runtime import preemption
  started = []

  def fake_train(config, workdir):
    started.append(os.path.relpath(workdir, tmp_path))
    os.makedirs(workdir)
    record = {"final": True, "best_target_val_accuracy": 0.5, "target_test_accuracy": 0.5}
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps(record) + "\n")
    if len(started) == 1:
      preemption.request()   # what the handler does
    return record

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  base = load_config(SYNTHETIC)
  with pytest.raises(errors.Preempted, match="stopped before the run in .*seed_1") as e:
    selection.compare(base, str(tmp_path), ["joint"], [0, 1], {})
  assert e.value.step is None and started == ["joint/default/seed_0"]
  assert not preemption.is_requested()   # cleared when the outermost block ends
  (row,) = selection.compare(base, str(tmp_path), ["joint"], [0, 1], {})
  assert started == ["joint/default/seed_0", "joint/default/seed_1"] and row["seeds"] == [0, 1]


def test_a_look_at_a_sweep_counts_a_pretrain_without_its_export_as_unfinished(tmp_path):
  """What pretrain_stage would train (final record but no exported weights) is NotFinished for
  a look that trains nothing, not read back and then trained."""
  base = load_config(SYNTHETIC)
  pre = tmp_path / "pretrain" / "default" / "seed_0"
  pre.mkdir(parents=True)
  (pre / "metrics.jsonl").write_text(json.dumps({"final": True}) + "\n")
  with pytest.raises(selection.NotFinished):
    selection.pretrained_start(base, str(tmp_path), 0, run_missing=False)
  (pre / "model.safetensors").write_bytes(b"weights")
  assert selection.pretrained_start(base, str(tmp_path), 0, run_missing=False) == str(
      pre / "model.safetensors")


def test_the_drivers_exit_75_on_a_stop_and_2_on_bad_input_with_one_line(capsys):
  from merlin_jax import errors
  for exc, code, line in [(errors.Preempted(None, "/w/run"), 75, "prog: stopped before the run"),
                          (errors.UserError("no such pair"), 2, "prog: error: no such pair")]:
    with pytest.raises(SystemExit) as e:
      with selection.driver("prog"):
        raise exc
    err = capsys.readouterr().err
    assert e.value.code == code and err.startswith(line) and err.count("\n") == 1


def test_libraries_define_no_flags_and_the_clis_parse_theirs():
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=ROOT)
  code = ("from absl import flags, logging; before = set(flags.FLAGS)\n"   # absl's own
          "from merlin_jax import config_base\n"
          "from merlin_jax.experiments import selection, suite_lib, target_size_lib\n"
          "print(sorted(set(flags.FLAGS) - before))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, check=True)
  assert out.stdout.strip() == "[]"
  for module, flag in [("merlin_jax.compare", "--grid"), ("merlin_jax.experiments.suite",
                                                          "--pairs"),
                       ("merlin_jax.experiments.target_size", "--[no]finished_only")]:
    out = subprocess.run([sys.executable, "-m", module, "--helpshort"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert flag in out.stdout, out.stderr[-2000:]   # (absl's help exits with status 1)


def test_target_size_sweep_reports_paired_gains_and_costs(tmp_path):
  """The target-size sweep on the synthetic pair: one record per (size, method), gains
  paired by seed over fine-tuning (whose own gain is 0), costs read from the runs, one
  pretrain run per seed shared by every size, and a plot."""
  from merlin_jax.experiments import target_size_lib
  pair = os.path.join(ROOT, "configs", "synthetic.py")
  grid = ["merlin_ft:inner.lr=0.5"]   # tuned on both seeds (the default tune_seeds)
  records = target_size_lib.sweep([pair], [12, 30], ["finetune", "merlin_ft"], [0, 1], 3, 3,
                                  grid, str(tmp_path))
  assert [(r["num_train"], r["method"]) for r in records] == [
      (12, "finetune"), (12, "merlin_ft"), (30, "finetune"), (30, "merlin_ft")]

  def final(n, method, setting, seed):
    path = tmp_path / "synthetic" / f"n{n}" / method / setting / f"seed_{seed}"
    return json.loads((path / "metrics.jsonl").read_text().splitlines()[-1])

  for r in records:
    tests = [final(r["num_train"], r["method"], r["setting"], s)["target_test_accuracy"]
             for s in (0, 1)]
    assert r["target_test_mean"] == pytest.approx(np.mean(tests))
    assert r["pretrain_steps"] == 3 and r["train_seconds"] > 0
    if r["method"] == "finetune":   # no grid: no choice, no margin
      assert r["val_margin"] is None and r["tune_seeds"] == []
    else:   # the margin of the choice: mean val over the tuning seeds, best - runner-up
      val = {name: np.mean([final(r["num_train"], "merlin_ft", name, s)
                            ["best_target_val_accuracy"] for s in (0, 1)])
             for name in ("default", "inner.lr=0.5")}
      assert r["tune_seeds"] == [0, 1] and r["setting"] == max(val, key=val.get)
      assert r["val_margin"] == pytest.approx(abs(val["default"] - val["inner.lr=0.5"]))
  by = {(r["num_train"], r["method"]): r for r in records}
  for n in (12, 30):
    assert by[(n, "finetune")]["gain_mean"] == 0.0
    ft, mft = by[(n, "finetune")], by[(n, "merlin_ft")]
    assert mft["gain_mean"] == pytest.approx(mft["target_test_mean"] - ft["target_test_mean"])
  # n=12: the meta split shrank to fit (6/6 of 12 target labels).
  config = json.loads((tmp_path / "synthetic" / "n12" / "merlin_ft" / "default" / "seed_0"
                       / "config.json").read_text())
  assert config["data.target.num_train"] == 12 and config["split.train_size"] == 6
  assert sorted(os.listdir(tmp_path / "synthetic" / "pretrain" / "default")) == [
      "seed_0", "seed_1"]
  assert not (tmp_path / "synthetic" / "n30" / "pretrain").exists()
  target_size_lib.plot(records, str(tmp_path / "plot.png"))
  assert (tmp_path / "plot.png").stat().st_size > 1000
  assert "| synthetic | 30 | merlin_ft |" in target_size_lib.markdown(records)
  # A look at a partial sweep trains nothing: the finished cells come back as they were, an
  # unrun size (20) and a cell with one unfinished run (12, seed 1 of merlin_ft) are named.
  (tmp_path / "synthetic" / "n12" / "merlin_ft" / "default" / "seed_1" / "metrics.jsonl"
   ).write_text("")
  missing = []
  partial = target_size_lib.sweep([pair], [12, 20, 30], ["finetune", "merlin_ft"], [0, 1], 3,
                                  3, grid, str(tmp_path), missing=missing)
  assert missing == [("synthetic", 12), ("synthetic", 20)]
  assert partial == [r for r in records if r["num_train"] == 30]
  assert not (tmp_path / "synthetic" / "n20").exists()


def test_target_size_command_line_names_the_tuning_seeds():
  """The command written above a table reproduces it: the tuning seeds (which decide the
  selection) are always on it, `--tune_seeds=` (empty) meaning all seeds, the CLI default."""
  import subprocess
  import sys
  from merlin_jax.experiments import target_size_lib
  code = ("from absl import flags; from merlin_jax.experiments import target_size\n"
          "print(flags.FLAGS['tune_seeds'].default)")   # (own process: flags are global)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, check=True)
  assert out.stdout.strip() == "[]"   # the CLI's default: tune on every seed
  line = target_size_lib.command(["configs/digits.py"], [50, 100], ["finetune"], [0, 1, 2],
                                 200, None, [])
  assert line.endswith("--seeds=0,1,2 --steps=200 --tune_seeds=")
  line = target_size_lib.command(["a.py", "b.py"], ["50"], ["finetune", "merlin"], ["0"], 5,
                                 300, ["0"])
  assert "--pairs=a.py,b.py --sizes=50 --methods=finetune,merlin" in line
  assert line.endswith("--steps=5 --num_val=300 --tune_seeds=0")


def test_target_size_grid_settings_are_clipped_to_fit_n():
  """The suite grid's meta split (150 + 50) does not fit n = 50: clipped like the config's
  (to n / 2 each); a setting that then equals the config's is dropped (the default run)."""
  from merlin_jax.config_base import load_config
  from merlin_jax.experiments import selection, target_size_lib
  grids = selection.parse_grid(["merlin:split.train_size=150;split.val_size=50",
                                "merlin:rho=0.3"])
  base = load_config(os.path.join(ROOT, "configs", "digits.py"))
  small = target_size_lib.sized(base, 50, None)
  assert target_size_lib.fitted_grids(grids, small)["merlin"] == [{"rho": 0.3}]
  large = target_size_lib.sized(base, 800, None)
  assert target_size_lib.fitted_grids(grids, large) == grids
  mid = target_size_lib.sized(base, 160, None)   # 80 / 80 by default: 80 / 50 differs
  assert target_size_lib.fitted_grids(grids, mid)["merlin"][0] == {
      "split.train_size": 80, "split.val_size": 50}
