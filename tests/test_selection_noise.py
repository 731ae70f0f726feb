"""The selection-noise report: single-split vs pooled choices, read from finished runs."""

import json
import os
import subprocess
import sys

import pytest

from merlin_jax.config_base import load_config
from merlin_jax.experiments import selection, selection_noise
from merlin_jax.runtime.metrics import JSONL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.py")

# val[name][seed], test[name][seed]: seed 0's split alone prefers default and seed 1's rho=3,
# each by one example; seed 2 ties default and rho=0.3 (the earlier wins); the pooled
# splits prefer rho=0.3.
VAL = {"default": [0.66, 0.60, 0.70], "rho=3": [0.60, 0.71, 0.40], "rho=0.3": [0.65, 0.70, 0.70]}
TEST = {"default": [0.80, 0.82, 0.84], "rho=3": [0.70, 0.72, 0.74], "rho=0.3": [0.90, 0.92, 0.94]}


def _write_runs(root, method="merlin", val=VAL, test=TEST, seeds=(0, 1, 2)):
  for name in val:
    for i, s in enumerate(seeds):
      d = os.path.join(root, method, name, f"seed_{s}")
      os.makedirs(d, exist_ok=True)
      with open(os.path.join(d, JSONL), "w") as f:
        f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
        f.write(json.dumps({"final": True, "best_target_val_accuracy": val[name][i],
                            "target_test_accuracy": test[name][i]}) + "\n")


def test_single_split_and_pooled_choices(tmp_path):
  _write_runs(str(tmp_path))
  base = load_config(SYNTHETIC)
  (row,) = selection_noise.pair_noise(base, str(tmp_path), ["merlin", "finetune"], [0, 1, 2],
                                      selection.parse_grid(["merlin:rho=3,0.3"]))
  assert row["candidates"] == ["default", "rho=3", "rho=0.3"]   # finetune: no grid, skipped
  assert row["single"] == {0: "default", 1: "rho=3", 2: "default"}
  assert row["pooled"] == "rho=0.3" and row["flips"] == 3
  # Two splits pooled: without seed 0 or 2 they agree with all three; without seed 1, not.
  assert row["leave_one_out"] == {0: "rho=0.3", 1: "default", 2: "rho=0.3"}
  assert row["loo_flips"] == 1
  assert row["single_test"][1] == pytest.approx(0.72)   # mean test over seeds of rho=3
  assert row["pooled_test"] == pytest.approx(0.92)
  assert row["single_margin"][1] == pytest.approx(0.01) and row["single_margin"][2] == 0.0
  total = selection_noise.summary([row])
  assert (total["flips"], total["choices"], total["first_differs"]) == (3, 3, 1)
  assert (total["loo_flips"], total["loo_choices"]) == (1, 3)
  assert total["mean_abs_test_change"] == pytest.approx(0.10)   # 82% -> 92%
  table = selection_noise.markdown({"synthetic": [row]}, {"synthetic": 100})
  assert "rho=3 (1.0)" in table and "| 3, 1 |" in table and "82.00 → 92.00" in table
  assert "3 of 3 single-split choices differ" in table and "(1 of 3 choices on all" in table


def test_the_choice_rule_is_the_one_compare_uses(tmp_path, monkeypatch):
  """Pooled over all seeds, the report's choice is the setting compare selects."""
  _write_runs(str(tmp_path))
  base = load_config(SYNTHETIC)
  grids = selection.parse_grid(["merlin:rho=3,0.3"])
  (row,) = selection.compare(base, str(tmp_path), ["merlin"], [0, 1, 2], grids,
                             run_missing=False)
  (noise,) = selection_noise.pair_noise(base, str(tmp_path), ["merlin"], [0, 1, 2], grids)
  assert row["setting"] == noise["pooled"]
  (seed1,) = selection.compare(base, str(tmp_path), ["merlin"], [0, 1, 2], grids,
                               tune_seeds=[1], run_missing=False)
  assert seed1["setting"] == noise["single"][1]


def test_a_missing_run_is_one_line_naming_the_suite_command(tmp_path):
  _write_runs(str(tmp_path / "synthetic"), seeds=(0,), val={k: v[:1] for k, v in VAL.items()},
              test={k: v[:1] for k, v in TEST.items()})
  out = subprocess.run(
      [sys.executable, "-m", "merlin_jax.experiments.selection_noise", f"--pairs={SYNTHETIC}",
       f"--workdir={tmp_path}", "--methods=merlin", "--grid=merlin:rho=3,0.3"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode != 0
  err = out.stderr.strip().splitlines()
  assert len([l for l in err if "Traceback" in l]) == 0
  assert "has not finished" in err[-1] and "--tune_seeds=" in err[-1], out.stderr
