r"""Run several methods (and seeds, and a small hyperparameter grid) on one config; print a table.

  python -m merlin_jax.compare --config=configs/digits.py --workdir=/tmp/merlin/compare \
      --methods=target_only,joint,finetune,l2sp,merlin,merlin_ft --seeds=0,1,2 \
      --grid='joint:alpha=0.1,0.5,0.9' --grid='merlin:rho=0.3,1,3' \
      --grid='merlin:inner.steps=5,50' --tune_seeds=0

Each run goes to WORKDIR/<method>/<setting>/seed_<s> (resumable: a finished run is read
back, not re-run). The two-stage methods (finetune, l2sp, merlin_ft) share one `pretrain`
run per seed (WORKDIR/pretrain/seed_<s>).

Grids: one `--grid` is a product over its axes; several `--grid`s for one method are a
union (so `--grid='merlin:rho=0.3,3' --grid='merlin:inner.steps=5,50'` varies one value at
a time around the config). A key set to the config's own value is dropped, so the config's
setting is always a candidate, is named `default` and wins ties. For each method, the
setting with the best mean *target validation* accuracy over the tuning seeds
(`--tune_seeds`, default: all seeds) is selected and then run on every seed; its target
test accuracy is reported as mean ± std over seeds. The test set never takes part in a choice.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import sys
from typing import Sequence

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from merlin_jax.metrics import JSONL, read_jsonl

def parse_grid(specs: Sequence[str]) -> dict[str, list[dict]]:
  """'joint:alpha=0.1,0.5;rho=1' -> {'joint': [{'alpha': 0.1, 'rho': 1}, {'alpha': 0.5, ...}]}."""
  grids: dict[str, list[dict]] = {}
  for spec in specs:
    method, _, body = spec.partition(":")
    axes = []
    for part in filter(None, body.split(";")):
      key, _, values = part.partition("=")
      axes.append([(key.strip(), _parse_value(v)) for v in values.split(",")])
    grids.setdefault(method.strip(), []).extend(
        dict(combo) for combo in itertools.product(*axes))
  return grids


def _parse_value(v: str):
  v = v.strip()
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(v.lower(), v)


def _setting_name(setting: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in sorted(setting.items())) or "default"


def _get(config, key: str):
  node = config
  for part in filter(None, key.split(".")):
    node = node[part]
  return node


def _set(config, key: str, value) -> None:
  parent, _, leaf = key.rpartition(".")
  node = _get(config, parent)
  node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else bool(value)


def candidates(base, settings: Sequence[dict]) -> dict[str, dict]:
  """Name -> setting: the config's own setting first ('default'), duplicates dropped.

  A key whose value equals the config's is removed, so `rho=1` on a config with rho=1 is
  the default run, not a second copy of it.
  """
  out = {"default": {}}
  for setting in settings:
    kept = {k: v for k, v in setting.items() if _get(base, k) != v}
    out.setdefault(_setting_name(kept), kept)
  return out


def run_one(base, method: str, seed: int, setting: dict, workdir: str,
            pretrained_dir: str | None = None) -> dict:
  from merlin_jax import train
  path = os.path.join(workdir, JSONL)
  if os.path.exists(path):
    records = read_jsonl(path)
    if records and records[-1].get("final"):
      return records[-1]
  config = copy.deepcopy(base)
  with config.unlocked():
    config.method = method
    config.seed = seed
    for k, v in setting.items():
      _set(config, k, v)
    if pretrained_dir is not None:
      config.pretrained.path = pretrained_dir
  return train.train_and_evaluate(config, workdir)


def compare(base, root: str, methods: Sequence[str], seeds: Sequence[int],
            grids: dict[str, list[dict]], tune_seeds: Sequence[int] | None = None) -> list[dict]:
  """Runs everything; returns one row per method with the selected setting's results.

  Every candidate setting runs on `tune_seeds` (default: all of `seeds`); the one with the
  best mean target-validation accuracy there (ties: the earlier candidate, the config's own
  setting first) then runs on all `seeds`.
  """
  tune_seeds = list(seeds) if tune_seeds is None else list(tune_seeds)
  from merlin_jax.methods import get_method
  rows = []
  pretrain_dirs = {}
  for method in methods:
    spec = get_method(method)
    if spec.needs_pretrained:
      for seed in seeds:
        if seed not in pretrain_dirs:
          d = os.path.join(root, "pretrain", "default", f"seed_{seed}")
          run_one(base, "pretrain", seed, {"total_steps": base.pretrained.steps}, d)
          pretrain_dirs[seed] = d
    cands = candidates(base, grids.get(method, []))

    def run(name, seed, method=method, cands=cands):
      return run_one(base, method, seed, cands[name],
                     os.path.join(root, method, name, f"seed_{seed}"), pretrain_dirs.get(seed))

    grid = {}  # name -> mean target val accuracy over tune_seeds (one candidate: no tuning)
    if len(cands) > 1:
      grid = {n: float(np.mean([run(n, s)["best_target_val_accuracy"] for s in tune_seeds]))
              for n in cands}
    chosen = max(grid, key=grid.get) if grid else "default"
    final = [run(chosen, s) for s in seeds]
    test = [r["target_test_accuracy"] for r in final]
    val = [r["best_target_val_accuracy"] for r in final]
    rows.append({
        "method": method, "setting": chosen, "seeds": list(seeds),
        "tune_seeds": tune_seeds if grid else [],
        "target_test_mean": float(np.mean(test)), "target_test_std": float(np.std(test)),
        "target_val_mean": float(np.mean(val)), "target_test": test,
        "grid": grid,
    })
  return rows


def markdown_table(rows: list[dict]) -> str:
  lines = ["| method | target test acc. (%) | target val acc. (%) | selected setting (on val) | seeds |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {100 * r['target_test_mean']:.2f} ± {100 * r['target_test_std']:.2f}"
                 f" | {100 * r['target_val_mean']:.2f} | {r['setting']} | {len(r['seeds'])} |")
  return "\n".join(lines)


def _define_flags():
  """Flags exist only when this module is the program (it is also imported as a library)."""
  global _CONFIG, _WORKDIR, _METHODS, _SEEDS, _GRID, _TUNE_SEEDS, _OUT
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of all runs.")
  _METHODS = flags.DEFINE_list("methods", ["target_only", "joint", "finetune", "l2sp", "merlin",
                                           "merlin_ft"], "Methods to run.")
  _SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  _GRID = flags.DEFINE_multi_string(
      "grid", [], "method:key=v1,v2[;key2=...]: values tried for that method, chosen on target val.")
  _TUNE_SEEDS = flags.DEFINE_list(
      "tune_seeds", [], "Seeds every grid setting runs on (chosen on their mean target val); "
      "the chosen setting then runs on all --seeds. Empty: all --seeds.")
  _OUT = flags.DEFINE_string("out", "", "Also write the markdown table (and a .json) here.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from merlin_jax import errors
  from merlin_jax.metrics import quiet_library_logs
  quiet_library_logs()
  seeds = [int(s) for s in _SEEDS.value]
  try:
    tune = [int(s) for s in _TUNE_SEEDS.value] or None
    rows = compare(_CONFIG.value, _WORKDIR.value, _METHODS.value, seeds, parse_grid(_GRID.value),
                   tune)
  except errors.UserError as e:
    print(f"merlin_jax.compare: error: {e}", file=sys.stderr)
    sys.exit(2)
  table = markdown_table(rows)
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(table + "\n")
    with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as f:
      json.dump(rows, f, indent=1)
  logging.info("rows: %s", json.dumps(rows))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
