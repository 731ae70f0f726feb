"""Methods x seeds x a small hyperparameter grid on one config, selected on target validation.

The library behind `python -m merlin_jax.compare` (the command line; see there for the
grid syntax) and `merlin_jax.experiments.suite`. It defines no flags.

Each run goes to ROOT/<method>/<setting>/seed_<s> (resumable: a finished run is read back,
not re-run). The two-stage methods (every method with `needs_pretrained`) start from the config's
`pretrained.path` if set, else from one `pretrain` run per seed, shared by all of them
(ROOT/pretrain/default/seed_<s>, `merlin_jax.train.pretrain_stage`).

A key set to the config's own value is dropped from a grid setting, so the config's setting
is always a candidate, is named `default` and wins ties. For each method, the setting with
the best mean *target validation* accuracy over the tuning seeds is selected and then run on
every seed; its target test accuracy is reported as mean ± std over seeds. The test set
never takes part in a choice.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import sys
from typing import Sequence

import numpy as np

from merlin_jax import errors
from merlin_jax.runtime import preemption
from merlin_jax.config_base import get_key, override
from merlin_jax.runtime.metrics import JSONL, read_jsonl


VAL_DECIMALS = 6   # validation accuracies equal to this many decimals are a tie


def parse_grid(specs: Sequence[str]) -> dict[str, list[dict]]:
  """'joint:alpha=0.1,0.5;rho=1' -> {'joint': [{'alpha': 0.1, 'rho': 1}, {'alpha': 0.5, ...}]}.

  One spec is a product over its axes; several specs for one method are a union.
  """
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


def candidates(base, settings: Sequence[dict]) -> dict[str, dict]:
  """Name -> setting: the config's own setting first ('default'), duplicates dropped.

  A key whose value equals the config's is removed, so `rho=1` on a config with rho=1 is
  the default run, not a second copy of it.
  """
  out = {"default": {}}
  for setting in settings:
    kept = {k: v for k, v in setting.items() if get_key(base, k) != v}
    out.setdefault(_setting_name(kept), kept)
  return out


@contextlib.contextmanager
def driver(prog: str):
  """The body of a command line that drives many runs (compare, the suite, the sweep): one
  stop flag over all of them, so a SIGTERM ends it after the current run with exit 75, and
  bad input as one line `PROG: error: ...` with exit 2."""
  try:
    with preemption.handle_signals():
      yield
  except errors.Preempted as e:
    print(f"{prog}: {e}", file=sys.stderr)
    sys.exit(errors.PREEMPTED_EXIT_CODE)
  except errors.UserError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)


class NotFinished(Exception):
  """A run that `compare(..., run_missing=False)` needed has not finished (its workdir)."""


def finished(workdir: str) -> dict | None:
  """The final metrics record of the run in workdir, or None if it has not finished."""
  path = os.path.join(workdir, JSONL)
  records = read_jsonl(path) if os.path.exists(path) else []
  return records[-1] if records and records[-1].get("final") else None


def run_one(base, method: str, seed: int, setting: dict, workdir: str,
            pretrained_path: str | None = None, run_missing: bool = True) -> dict:
  """One run of `method` with `setting`'s dotted keys; its final metrics record. A finished
  run is read back; an unfinished one is trained, or with run_missing=False raises
  NotFinished."""
  from merlin_jax import train
  record = finished(workdir)
  if record is not None:
    return record
  if not run_missing:
    raise NotFinished(workdir)
  if preemption.is_requested():   # came during the last window of the previous run
    raise errors.Preempted(None, workdir)
  config = copy.deepcopy(base)
  with config.unlocked():
    config.method = method
    config.seed = seed
    override(config, setting)
    if pretrained_path is not None:
      config.pretrained.path = pretrained_path
  return train.train_and_evaluate(config, workdir)


def pretrained_start(base, root: str, seed: int, run_missing: bool = True) -> str | None:
  """Where seed's two-stage runs start: None (the config's own pretrained.path), or the
  export of the shared pretrain run ROOT/pretrain/default/seed_<s> (run if not finished,
  or with run_missing=False, NotFinished)."""
  if base.pretrained.path:
    return None
  from merlin_jax import train, two_stage
  config = copy.deepcopy(base)
  config.seed = seed
  pre_workdir = os.path.join(root, two_stage.PRETRAIN_DIR, "default", f"seed_{seed}")
  if not two_stage.pretrain_finished(pre_workdir):   # what pretrain_stage would train
    if not run_missing:
      raise NotFinished(pre_workdir)
    if preemption.is_requested():
      raise errors.Preempted(None, pre_workdir)
  return train.pretrain_stage(config, pre_workdir)


def compare(base, root: str, methods: Sequence[str], seeds: Sequence[int],
            grids: dict[str, list[dict]], tune_seeds: Sequence[int] | None = None,
            pretrain_root: str | None = None, run_missing: bool = True) -> list[dict]:
  """Runs everything; returns one row per method with the selected setting's results.
  With run_missing=False nothing trains: a run that has not finished raises NotFinished.

  Every candidate setting runs on `tune_seeds` (default: all of `seeds`); the one with the
  best mean target-validation accuracy there (ties: the earlier candidate, the config's own
  setting first) then runs on all `seeds`. `pretrain_root` (default `root`) holds the
  shared pretrain runs: several compares that differ only on the target side can share
  them (pre-training reads only the source; a finished run is read back).
  """
  with preemption.handle_signals():   # one stop flag for all the runs: none starts after it
    return _compare(base, root, methods, seeds, grids, tune_seeds, pretrain_root, run_missing)


def _compare(base, root, methods, seeds, grids, tune_seeds, pretrain_root, run_missing):
  tune_seeds = list(seeds) if tune_seeds is None else list(tune_seeds)
  from merlin_jax.methods import get_method
  rows = []
  starts = {}  # seed -> pretrained path of the two-stage methods (computed once)
  for method in methods:
    if get_method(method).needs_pretrained:
      for seed in seeds:
        if seed not in starts:
          starts[seed] = pretrained_start(base, pretrain_root or root, seed, run_missing)
    cands = candidates(base, grids.get(method, []))

    def run(name, seed, method=method, cands=cands):
      return run_one(base, method, seed, cands[name],
                     os.path.join(root, method, name, f"seed_{seed}"), starts.get(seed),
                     run_missing)

    grid = {}  # name -> mean target val accuracy over tune_seeds (one candidate: no tuning)
    if len(cands) > 1:   # rounded: the accuracies are float32 counts / num_val, and a mean's
      grid = {n: round(float(np.mean(   # last bits must not break a tie (the earlier wins)
          [run(n, s)["best_target_val_accuracy"] for s in tune_seeds])), VAL_DECIMALS)
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
