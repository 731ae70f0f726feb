"""When does MeRLin help? Accuracy gain over fine-tuning against the number of target labels.

The library behind `python -m merlin_jax.experiments.target_size` (it defines no flags).
For every pair (a config file) and target-set size n (`data.target.num_train`), runs
`selection.compare` (methods x seeds, each method's grid chosen on target validation,
never on the test set) and reports, per method, the paired gain over fine-tuning (seed by
seed: test accuracy - fine-tuning's test accuracy with the same seed, then its mean and
95% Student t-interval over seeds, merlin_jax/experiments/intervals.py; a gain whose
interval covers 0 reads as a tie), its wall time and its outer steps to the selected
model (a two-stage method's shared pre-training counted separately), so a gain is read at
matched cost, and the val margin of each choice (the selected setting's mean target-val
accuracy over the tuning seeds minus the runner-up's), so a choice decided by one
validation example reads as a tie.

Pre-training reads only the source, so one pretrain run per seed serves every size
(ROOT/<pair>/pretrain). The per-step target split of the meta-methods and the target
minibatch of the others shrink with n where the config's would not fit (both at most
n / 2 and n).
"""

from __future__ import annotations

import copy
import os

import numpy as np

from merlin_jax.config_base import get_key, load_config
from merlin_jax.experiments import selection, suite_lib
from merlin_jax.runtime.metrics import JSONL, read_jsonl

BASELINE = "finetune"
BEGIN, END = "<!-- target_size:begin -->", "<!-- target_size:end -->"


def sized(config, num_train: int, num_val: int | None):
  """The config with n = num_train target labels (and num_val held out, if given)."""
  c = copy.deepcopy(config)
  c.data.target.num_train = num_train
  if num_val is not None:
    c.data.target.num_val = num_val
  half = max(num_train // 2, 1)
  c.split.train_size = min(c.split.train_size, half)
  c.split.val_size = min(c.split.val_size, half)
  c.target_batch_size = min(c.target_batch_size, num_train)
  return c


def fitted_grids(grids: dict[str, list[dict]], config) -> dict[str, list[dict]]:
  """The grids at this n: split sizes clipped to n / 2 as `sized` clips the config's; a
  setting that then equals the config (the default run) or an earlier one is dropped."""
  half = max(config.data.target.num_train // 2, 1)
  out = {}
  for method, settings in grids.items():
    kept = []
    for setting in settings:
      setting = {k: min(v, half) if k in ("split.train_size", "split.val_size") else v
                 for k, v in setting.items()}
      if setting not in kept and any(get_key(config, k) != v for k, v in setting.items()):
        kept.append(setting)
    out[method] = kept
  return out


def _final(root: str, method: str, setting: str, seed: int) -> dict:
  return read_jsonl(os.path.join(root, method, setting, f"seed_{seed}", JSONL))[-1]


def run_cost(root: str, pretrain_root: str, row: dict, needs_pretrained: bool) -> dict:
  """Mean over seeds of the selected setting's wall time and steps to its selected model
  (and of the shared pre-training, for two-stage methods)."""
  finals = [_final(root, row["method"], row["setting"], s) for s in row["seeds"]]
  cost = {"train_seconds": float(np.mean([f["train_seconds"] for f in finals])),
          "selected_step": float(np.mean([f["selected_step"] for f in finals])),
          "pretrain_seconds": 0.0, "pretrain_steps": 0.0}
  if needs_pretrained:
    pre = [_final(pretrain_root, "pretrain", "default", s) for s in row["seeds"]]
    cost["pretrain_seconds"] = float(np.mean([f["train_seconds"] for f in pre]))
    cost["pretrain_steps"] = float(np.mean([f["step"] for f in pre]))
  return cost


val_margin = selection.val_margin


def sweep(pairs, sizes, methods, seeds, steps, eval_every, grid_specs, root, num_val=None,
          tune_seeds=None, missing=None, verbose=False, failures=None) -> list[dict]:
  """Runs every pair x size; one record per (pair, size, method).

  A failed run does not stop the sweep (selection.compare records it): a method whose
  chosen setting failed has a record with failed=True and the reason; `failures` (a list),
  if given, collects the failed runs' names for the command line's exit line.

  With a list as `missing`, nothing trains: a (pair, n) cell with an unfinished run is left
  out of the records and its (pair, n) appended to `missing` (a look at a partial sweep).
  """
  from merlin_jax.methods import get_method
  if BASELINE not in methods:
    raise ValueError(f"the gains are over {BASELINE}: include it in the methods")
  grids = selection.parse_grid(grid_specs)
  if missing is None:   # a look at a partial sweep reads no data
    suite_lib.check_data(pairs)
  records = []
  for pair in pairs:
    name = os.path.splitext(os.path.basename(pair.partition(":")[0]))[0]
    base = suite_lib.scaled(load_config(pair), steps, eval_every)
    pretrain_root = os.path.join(root, name)
    for n in sizes:
      size_root = os.path.join(root, name, f"n{n}")
      config = sized(base, n, num_val)
      try:
        rows = selection.compare(config, size_root, methods, seeds,
                                 fitted_grids(grids, config), tune_seeds,
                                 pretrain_root=pretrain_root, run_missing=missing is None,
                                 verbose=verbose)
      except selection.NotFinished:
        missing.append((name, n))
        continue
      failed_ids = selection.failed_runs(rows)
      if failures is not None:
        failures.extend(f"{name}/n{n}/{f}" for f in failed_ids)
      intervals_ = selection.gain_intervals(rows)
      for r in rows:
        iv = intervals_[r["method"]]
        record = dict(pair=name, num_train=n, method=r["method"], setting=r["setting"],
                      seeds=r["seeds"], tune_seeds=r["tune_seeds"],
                      val_margin=val_margin(r["grid"]), failed=bool(r.get("failed")))
        if r.get("failed"):
          records.append(dict(record, failure=selection.failure_text(r)))
          continue
        cost = run_cost(size_root, pretrain_root, r, get_method(r["method"]).needs_pretrained)
        records.append(dict(record, target_test_mean=r["target_test_mean"],
                            target_test_std=r["target_test_std"], target_test=r["target_test"],
                            gain_mean=None if iv is None else iv["mean"],
                            gain_std=None if iv is None else iv["std"],   # ddof=1
                            gain_lo=None if iv is None else iv["lo"],
                            gain_hi=None if iv is None else iv["hi"],
                            gain_tie=None if iv is None else iv["tie"], **cost))
  return records


def command(pairs, sizes, methods, seeds, steps, num_val=None, tune_seeds=()) -> str:
  """The command line that reproduces a table, the selection's tuning seeds included
  (`--tune_seeds=` empty: all seeds)."""
  return (f"python -m merlin_jax.experiments.target_size --pairs={','.join(pairs)} "
          f"--sizes={','.join(map(str, sizes))} --methods={','.join(methods)} "
          f"--seeds={','.join(map(str, seeds))} --steps={steps}"
          + (f" --num_val={num_val}" if num_val is not None else "")
          + f" --tune_seeds={','.join(map(str, tune_seeds))}")


def markdown(records: list[dict]) -> str:
  from merlin_jax.experiments import intervals
  lines = ["| pair | n | method | test acc. (%) | gain over fine-tuning (pp) [95% CI] "
           "| setting (val) | val margin (pp) | wall s | steps to selected "
           "| + pre-training s / steps |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    margin = "–" if r.get("val_margin") is None else f"{100 * r['val_margin']:.1f}"
    if r.get("failed"):
      lines.append(f"| {r['pair']} | {r['num_train']} | {r['method']} | {r['failure']} | – "
                   f"| {r['setting']} | {margin} | – | – | – |")
      continue
    pre = (f"{r['pretrain_seconds']:.0f} / {r['pretrain_steps']:.0f}"
           if r["pretrain_steps"] else "–")
    if r["method"] == BASELINE:
      gain = "(baseline)"
    elif r.get("gain_mean") is None:
      gain = "– (fine-tuning failed)"
    else:
      gain = intervals.format_interval(dict(mean=r["gain_mean"], lo=r.get("gain_lo"),
                                            hi=r.get("gain_hi"), tie=r.get("gain_tie")))
    lines.append(
        f"| {r['pair']} | {r['num_train']} | {r['method']} | {100 * r['target_test_mean']:.2f} ± "
        f"{100 * r['target_test_std']:.2f} | {gain}"
        f" | {r['setting']} | {margin} | {r['train_seconds']:.0f} | {r['selected_step']:.0f} | {pre} |")
  lines += ["", f"Gain: {intervals.DESCRIPTION}. Test accuracy: mean ± std (ddof=0) over seeds."]
  return "\n".join(lines)


def _half_width(r: dict) -> float:
  """The error bar: half the 95% t-interval of the gain (0 with one seed)."""
  return 0.0 if r.get("gain_lo") is None else (r["gain_hi"] - r["gain_lo"]) / 2


def plot(records: list[dict], path: str) -> None:
  """Gain over fine-tuning (mean, error bars: 95% t-interval over seeds) against n, one
  panel per pair."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  pairs = sorted({r["pair"] for r in records})
  fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
  for ax, pair in zip(axes[0], pairs):
    mine = [r for r in records if r["pair"] == pair and r["method"] != BASELINE
            and r.get("gain_mean") is not None]   # a failed run has no point
    for i, method in enumerate(sorted({r["method"] for r in mine})):
      pts = sorted((r["num_train"], r["gain_mean"], _half_width(r)) for r in mine
                   if r["method"] == method)
      n, g, s = (np.array(v) for v in zip(*pts))
      ax.errorbar(n * (1 + 0.03 * i), 100 * g, yerr=100 * s, marker="o", capsize=3,
                  label=method)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    sizes = sorted({r["num_train"] for r in mine})
    ax.set_xticks(sizes, [str(n) for n in sizes])   # the sizes run, not powers of ten
    ax.minorticks_off()
    seeds = sorted({len(r["seeds"]) for r in mine if "seeds" in r})
    over = f"{'/'.join(map(str, seeds))} seeds" if seeds else "seeds"
    suite_lib.label_axes(ax, "target labels n (points of a method offset by 3% to separate)",
                         "test accuracy - fine-tuning's (pp)",
                         f"{pair}\nmean over {over}; bar = ± 1 std (ddof 0) of the per-seed "
                         "gain")
    ax.title.set_fontsize(9)
  suite_lib.save_figure(fig, path)
