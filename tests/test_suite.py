"""Smoke test of the experiment suite and the compare runner on the tiny synthetic pair."""

import json
import os

import pytest

from merlin_jax import compare
from merlin_jax.experiments import suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_grid():
  grid = compare.parse_grid(["joint:alpha=0.2,0.8;rho=1", "merlin:inner.steps=3,5"])
  assert grid["joint"] == [{"alpha": 0.2, "rho": 1}, {"alpha": 0.8, "rho": 1}]
  assert grid["merlin"] == [{"inner.steps": 3}, {"inner.steps": 5}]
  # Several specs for one method are a union (one value at a time), not a product.
  union = compare.parse_grid(["merlin:rho=0.3,3", "merlin:inner.steps=5"])
  assert union["merlin"] == [{"rho": 0.3}, {"rho": 3}, {"inner.steps": 5}]


def test_candidates_put_the_config_first_and_drop_its_own_values():
  base = suite.load_config(os.path.join(ROOT, "configs", "synthetic.py"))
  settings = [{"rho": base.rho}, {"rho": 3.0}, {"inner.steps": base.inner.steps, "rho": 3.0},
              {"split.train_size": 7, "split.val_size": base.split.val_size}]
  cands = compare.candidates(base, settings)
  assert list(cands) == ["default", "rho=3.0", "split.train_size=7"]
  assert cands["default"] == {} and cands["split.train_size=7"] == {"split.train_size": 7}


def test_grid_runs_on_tune_seeds_and_the_choice_on_all_seeds(tmp_path, monkeypatch):
  """The protocol, with a fake trainer: val picks the setting, test never does."""
  calls = []
  val = {"default": 0.5, "rho=3": 0.9, "rho=0.3": 0.9}   # tie: the earlier candidate wins
  test = {"default": 0.99, "rho=3": 0.1, "rho=0.3": 0.2}  # would flip the choice if used

  def fake_run_one(base, method, seed, setting, workdir, pretrained_dir=None):
    name = compare._setting_name(setting)
    calls.append((name, seed))
    return {"best_target_val_accuracy": val[name], "target_test_accuracy": test[name] + seed}

  monkeypatch.setattr(compare, "run_one", fake_run_one)
  base = suite.load_config(os.path.join(ROOT, "configs", "synthetic.py"))
  (row,) = compare.compare(base, str(tmp_path), ["merlin"], [0, 1, 2],
                           compare.parse_grid(["merlin:rho=3,0.3"]), tune_seeds=[1])
  assert row["setting"] == "rho=3" and row["tune_seeds"] == [1]
  assert row["grid"] == {"default": 0.5, "rho=3": 0.9, "rho=0.3": 0.9}
  assert sorted(set(calls)) == sorted({("default", 1), ("rho=0.3", 1), ("rho=3", 0),
                                       ("rho=3", 1), ("rho=3", 2)})
  assert row["target_test"] == [0.1, 1.1, 2.1]


def test_suite_writes_table_and_plot(tmp_path):
  workspace = tmp_path / "WS.md"
  workspace.write_text("# log\n\nkept text\n")
  pair = os.path.join(ROOT, "configs", "synthetic.py")
  text = suite.run_suite([pair], ["joint", "merlin"], [0, 1], steps=3, eval_every=2,
                         grid_specs=[], root=str(tmp_path / "runs"),
                         workspace=str(workspace), plots="plots")
  body = workspace.read_text()
  assert "kept text" in body and suite.BEGIN in body and suite.END in body
  for method in ("joint", "merlin"):
    assert f"| {method} |" in body
  assert "±" in body and (tmp_path / "plots" / "suite_synthetic.png").stat().st_size > 1000
  assert sorted(os.listdir(tmp_path / "runs" / "synthetic" / "joint" / "default")) == [
      "seed_0", "seed_1"]
  first = json.load(open(tmp_path / "runs" / "synthetic" / "wall_minutes.json"))["minutes"]
  assert first > 0
  # Rerunning reuses finished runs, adds its own (short) time, and replaces (not
  # duplicates) the section.
  suite.run_suite([pair], ["joint"], [0], steps=3, eval_every=2, grid_specs=[],
                  root=str(tmp_path / "runs"), workspace=str(workspace), plots="plots")
  assert workspace.read_text().count(suite.BEGIN) == 1
  assert json.load(open(tmp_path / "runs" / "synthetic" / "wall_minutes.json"))["minutes"] > first
  assert text.startswith("Command:")


def test_compare_selects_on_validation(tmp_path):
  base = suite.scaled(suite.load_config(os.path.join(ROOT, "configs", "synthetic.py")), 3, 2)
  rows = compare.compare(base, str(tmp_path), ["joint"], [0], compare.parse_grid(
      ["joint:alpha=0.1,0.9"]))
  (row,) = rows
  assert row["setting"] == max(row["grid"], key=row["grid"].get)
  final = json.loads(open(tmp_path / "joint" / row["setting"] / "seed_0" / "metrics.jsonl")
                     .readlines()[-1])
  assert row["target_test"] == [final["target_test_accuracy"]]
