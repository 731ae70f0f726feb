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
  # Rerunning reuses finished runs and replaces (not duplicates) the section.
  suite.run_suite([pair], ["joint"], [0], steps=3, eval_every=2, grid_specs=[],
                  root=str(tmp_path / "runs"), workspace=str(workspace), plots="plots")
  assert workspace.read_text().count(suite.BEGIN) == 1
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
