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

A run that fails (diverges: NonFiniteLossError; or any other error that is not bad input or
a stop) does not end the comparison: it is recorded ("diverged at step 8: non-finite loss")
and the other runs go on. A failed grid candidate is out of the choice; a method whose
chosen setting failed on a seed has a failed row (no accuracy). The command lines write
their table, then exit FAILED_RUNS_EXIT_CODE with one line naming the failed runs; a failed
run wrote no final record, so rerunning the same command retries only those.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import sys
from typing import Sequence

from absl import logging
import numpy as np

from merlin_jax import errors
from merlin_jax.runtime import preemption
from merlin_jax.config_base import get_key, override
from merlin_jax.runtime.metrics import JSONL, read_jsonl


VAL_DECIMALS = 6   # validation accuracies equal to this many decimals are a tie
FAILED_RUNS_EXIT_CODE = 3   # the table was written; some runs failed (named on stderr)


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
  from merlin_jax import boundary   # one line and its exit status for any failure
  with boundary.cli(prog), preemption.handle_signals():
    yield


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
            pretrain_root: str | None = None, run_missing: bool = True,
            verbose: bool = False) -> list[dict]:
  """Runs everything; returns one row per method with the selected setting's results.
  With run_missing=False nothing trains: a run that has not finished raises NotFinished.

  Every candidate setting runs on `tune_seeds` (default: all of `seeds`); the one with the
  best mean target-validation accuracy there (ties: the earlier candidate, the config's own
  setting first) then runs on all `seeds`. `pretrain_root` (default `root`) holds the
  shared pretrain runs: several compares that differ only on the target side can share
  them (pre-training reads only the source; a finished run is read back).

  A failed run is recorded, not raised (module docstring): row["failures"] lists
  {run, reason} of every failed run of that method (its shared pretrain runs included),
  and a row whose chosen setting failed on any seed has row["failed"] = True and no
  accuracies. `verbose`: log each failure's traceback.
  """
  with preemption.handle_signals():   # one stop flag for all the runs: none starts after it
    return _compare(base, root, methods, seeds, grids, tune_seeds, pretrain_root, run_missing,
                    verbose)


class RunFailed(Exception):
  """A run (or the pretrain run it starts from) failed; str() is the one-line reason."""


_NON_FINITE = re.compile(r"non-finite value at step (\d+) in ([^;]+)")


def failure_reason(e: BaseException) -> str:
  """The one line a table shows for a failed run: 'diverged at step 8: non-finite loss,
  grad_norm' for a NonFiniteLossError, else 'failed: <type>: <first line>'."""
  text = " ".join(str(e).split())
  if isinstance(e, errors.NonFiniteLossError):
    m = _NON_FINITE.search(text)
    if m:
      return f"diverged at step {m.group(1)}: non-finite {m.group(2)}"
    return f"diverged: {text[:200]}"
  if isinstance(e, RunFailed):
    return text
  return f"failed: {type(e).__name__}: {text[:200]}"


def _guarded(fn, what: str, verbose: bool):
  """fn() or, if it fails (not bad input, a stop or an unfinished look), RunFailed naming
  the reason; the traceback is logged only when verbose."""
  try:
    return fn()
  except (errors.UserError, errors.Preempted, NotFinished, KeyboardInterrupt):
    raise
  except Exception as e:  # noqa: BLE001 - one failed run must not end a sweep
    reason = failure_reason(e)
    if verbose:
      logging.exception("%s: %s", what, reason)
    else:
      logging.error("%s: %s (--verbose for the traceback)", what, reason)
    raise RunFailed(reason) from None


def _compare(base, root, methods, seeds, grids, tune_seeds, pretrain_root, run_missing,
             verbose=False):
  tune_seeds = list(seeds) if tune_seeds is None else list(tune_seeds)
  from merlin_jax.methods import get_method
  rows = []
  starts = {}  # seed -> pretrained path of the two-stage methods, or the RunFailed (once)
  for method in methods:
    failures = []   # [{run, reason}]: this method's failed runs, each once
    if get_method(method).needs_pretrained:
      for seed in seeds:
        pre = os.path.join(pretrain_root or root, "pretrain", "default", f"seed_{seed}")
        if seed not in starts:
          try:
            starts[seed] = _guarded(lambda seed=seed: pretrained_start(
                base, pretrain_root or root, seed, run_missing), pre, verbose)
          except RunFailed as e:
            starts[seed] = e
        if isinstance(starts[seed], RunFailed):   # every two-stage row names it
          failures.append({"run": os.path.relpath(pre, root), "reason": str(starts[seed])})
    cands = candidates(base, grids.get(method, []))
    results = {}   # (name, seed) -> final record, or None if it failed

    def run(name, seed, method=method, cands=cands, results=results, failures=failures):
      if (name, seed) not in results:
        rel = os.path.join(method, name, f"seed_{seed}")
        start = starts.get(seed) if get_method(method).needs_pretrained else None
        try:
          if isinstance(start, RunFailed):
            raise RunFailed(f"not run: its pretrain run failed ({start})")
          results[name, seed] = _guarded(lambda: run_one(
              base, method, seed, cands[name], os.path.join(root, rel), start, run_missing),
              rel, verbose)
        except RunFailed as e:
          results[name, seed] = None
          if not str(e).startswith("not run:"):
            failures.append({"run": rel, "reason": str(e)})
      return results[name, seed]

    grid = {}  # name -> mean target val accuracy over tune_seeds (one candidate: no tuning)
    grid_failed = []   # candidates out of the choice: a tuning run failed
    if len(cands) > 1:   # rounded: the accuracies are float32 counts / num_val, and a mean's
      for n in cands:    # last bits must not break a tie (the earlier wins)
        recs = [run(n, s) for s in tune_seeds]
        if any(r is None for r in recs):
          grid_failed.append(n)
        else:
          grid[n] = round(float(np.mean([r["best_target_val_accuracy"] for r in recs])),
                          VAL_DECIMALS)
    chosen = choose(grid) if grid else ("default" if not grid_failed else None)
    final = [run(chosen, s) for s in seeds] if chosen is not None else [None] * len(seeds)
    failed = any(r is None for r in final)
    test = [None if r is None else r["target_test_accuracy"] for r in final]
    val = [r["best_target_val_accuracy"] for r in final if r is not None]
    rows.append({
        "method": method, "setting": chosen or "none", "seeds": list(seeds),
        "tune_seeds": tune_seeds if len(cands) > 1 else [],
        "target_test_mean": None if failed else float(np.mean(test)),
        "target_test_std": None if failed else float(np.std(test)),
        "target_val_mean": None if failed else float(np.mean(val)), "target_test": test,
        "grid": grid, "grid_failed": grid_failed, "failed": failed, "failures": failures,
    })
  return rows


def failed_runs(rows: Sequence[dict]) -> list[str]:
  """'method/setting/seed_s (reason)' of every failed run in rows, each once."""
  out = []
  for r in rows:
    for f in r.get("failures", []):
      line = f"{f['run']} ({f['reason']})"
      if line not in out:
        out.append(line)
  return out


def exit_if_failed(prog: str, failures: Sequence[str]) -> None:
  """After the table is written: one line naming the failed runs, exit status
  FAILED_RUNS_EXIT_CODE (a rerun of the same command retries only those)."""
  if failures:
    print(f"{prog}: {len(failures)} run(s) failed (the table marks them; rerun the same "
          f"command to retry only those): {'; '.join(failures)}", file=sys.stderr)
    sys.exit(FAILED_RUNS_EXIT_CODE)


BASELINE = "finetune"   # the gains of the tables are over fine-tuning


def choose(grid: dict[str, float]) -> str:
  """The selected candidate of {name: mean target-val accuracy}: the best, ties to the
  earlier name (the config's own setting is first). Values are compared as rounded to
  VAL_DECIMALS by the caller."""
  return max(grid, key=grid.get)


def val_margin(grid: dict[str, float]) -> float | None:
  """How far the selected setting's mean target-val accuracy is ahead of the runner-up's
  (None without a grid): a choice by less than a validation example or two is a tie."""
  if len(grid) < 2:
    return None
  best, second = sorted(grid.values(), reverse=True)[:2]
  return best - second


def gain_intervals(rows: Sequence[dict], baseline: str = BASELINE) -> dict[str, dict | None]:
  """method -> the paired test-accuracy difference to `baseline` with its 95% t-interval
  over seeds (intervals.paired_interval), or None (no baseline row, or a failed row)."""
  from merlin_jax.experiments import intervals
  base = next((r for r in rows if r["method"] == baseline), None)
  out = {}
  for r in rows:
    ok = base is not None and not base.get("failed") and not r.get("failed")
    out[r["method"]] = (intervals.paired_interval(r["target_test"], base["target_test"])
                        if ok else None)
  return out


def failure_text(row: dict) -> str:
  """A failed row's cell: why its chosen setting has no result."""
  method = row["method"]   # its chosen setting's runs and the pretrain runs it starts from
  own = [f"{f['run']}: {f['reason']}" for f in row["failures"]
         if f["run"].startswith(f"{method}/{row['setting']}/")
         or not f["run"].startswith(f"{method}/")]
  if row["setting"] == "none":
    return "failed: every grid setting failed (" + "; ".join(own or [
        f"{f['run']}: {f['reason']}" for f in row["failures"]]) + ")"
  return "failed: " + "; ".join(own or ["see the log"])


def markdown_table(rows: list[dict]) -> str:
  """One line per method: test accuracy (mean ± std over seeds), the paired gain over
  fine-tuning with its 95% t-interval ('tie' when it covers 0), the selection's val margin;
  a failed run's row says why."""
  from merlin_jax.experiments import intervals
  gains = gain_intervals(rows)
  lines = ["| method | target test acc. (%) | gain over fine-tuning (pp) [95% CI] "
           "| target val acc. (%) | selected setting (on val) | val margin (pp) | seeds |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    margin = val_margin(r["grid"])
    margin = "–" if margin is None else f"{100 * margin:.1f}"
    failed_grid = "".join(f"; {n}: failed" for n in r.get("grid_failed", []))
    if r.get("failed"):
      lines.append(f"| {r['method']} | {failure_text(r)} | – | – | {r['setting']}{failed_grid} "
                   f"| {margin} | {len(r['seeds'])} |")
      continue
    gain = "–" if r["method"] == BASELINE else intervals.format_interval(gains[r["method"]])
    lines.append(f"| {r['method']} | {100 * r['target_test_mean']:.2f} ± "
                 f"{100 * r['target_test_std']:.2f} | {gain} | {100 * r['target_val_mean']:.2f}"
                 f" | {r['setting']}{failed_grid} | {margin} | {len(r['seeds'])} |")
  lines += ["", f"Gain: {intervals.DESCRIPTION}. Test accuracy: mean ± std (ddof=0) over "
            "seeds. Val margin: the selected setting's mean target-val accuracy minus the "
            "runner-up's (one val example is 100 / num_val pp)."]
  return "\n".join(lines)
