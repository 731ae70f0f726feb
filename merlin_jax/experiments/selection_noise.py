r"""How much does a grid choice depend on which validation split made it? Nothing trains.

  python -m merlin_jax.experiments.suite --pairs=configs/digits.py --tune_seeds= \
      --workdir=/tmp/merlin/suite                        # every grid setting on every seed
  python -m merlin_jax.experiments.selection_noise --pairs=configs/digits.py \
      --workdir=/tmp/merlin/suite

Each seed draws its own target train/validation split from the same labels (and its own
initialisation), so a grid run on seeds 0, 1, 2 gives three independent choices of one
validation split each, and a pooled choice over all three (the mean validation accuracy,
which `selection.compare` makes when the grid runs on all seeds: the target-size sweep's
protocol). The suite's default protocol (`--tune_seeds=0`) is the single choice of seed 0.

For each method with a grid this reads the finished runs and reports:
- the setting chosen on each split alone and on the pooled splits;
- how many of the single-split choices differ from the pooled one (`flips`);
- the target test accuracy (mean over the seeds) the table would report under each choice,
  so the effect of the protocol on the reported number is visible. The test set only
  measures the protocols here; it chooses nothing.
Runs missing (the grid ran on seed 0 only) end it with one line naming the command that
runs them.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from merlin_jax.experiments import selection

SUITE_COMMAND = ("python -m merlin_jax.experiments.suite --pairs={pair} --tune_seeds= "
                 "--workdir={workdir} (with this command's --seeds, --steps, --eval_every "
                 "and --grid)")


def _record(root: str, method: str, name: str, seed: int) -> dict:
  workdir = os.path.join(root, method, name, f"seed_{seed}")
  record = selection.finished(workdir)
  if record is None:
    raise selection.NotFinished(workdir)
  return record


def _rounded(x: float) -> float:
  return round(float(x), selection.VAL_DECIMALS)


def method_noise(root: str, method: str, names: Sequence[str], seeds: Sequence[int]) -> dict:
  """One method's single-split and pooled choices among candidate `names` (the config's own
  setting first) from its finished runs under `root` (raises NotFinished for a missing one).

  Returns {method, candidates, single: {seed: name}, pooled: name, flips, leave_one_out:
  {left-out seed: name chosen on the other splits pooled} (3 seeds or more), loo_flips, test: {name:
  mean test accuracy over seeds}, single_test: {seed: test of that choice}, pooled_test,
  single_margin: {seed: val margin on that split}, pooled_margin}.
  """
  records = {n: [_record(root, method, n, s) for s in seeds] for n in names}
  val = {n: [r["best_target_val_accuracy"] for r in rs] for n, rs in records.items()}
  test = {n: float(np.mean([r["target_test_accuracy"] for r in rs]))
          for n, rs in records.items()}
  single, single_margin = {}, {}
  for i, s in enumerate(seeds):
    grid = {n: _rounded(val[n][i]) for n in names}
    single[s] = selection.choose(grid)
    single_margin[s] = selection.val_margin(grid)
  pooled_grid = {n: _rounded(np.mean(val[n])) for n in names}
  pooled = selection.choose(pooled_grid)
  # Pools of all splits but one: does a choice settle as splits are added?
  leave_one_out = {s: selection.choose({n: _rounded(np.mean(np.delete(val[n], i)))
                                        for n in names})
                   for i, s in enumerate(seeds)} if len(seeds) > 2 else {}
  return dict(method=method, candidates=list(names), single=single, pooled=pooled,
              flips=sum(c != pooled for c in single.values()),
              leave_one_out=leave_one_out,
              loo_flips=sum(c != pooled for c in leave_one_out.values()), test=test,
              single_test={s: test[c] for s, c in single.items()}, pooled_test=test[pooled],
              single_margin=single_margin, pooled_margin=selection.val_margin(pooled_grid))


def pair_noise(base, root: str, methods: Sequence[str], seeds: Sequence[int],
               grids: dict[str, list[dict]]) -> list[dict]:
  """method_noise for every method of `methods` with more than one candidate."""
  out = []
  for method in methods:
    names = list(selection.candidates(base, grids.get(method, [])))
    if len(names) > 1:
      out.append(method_noise(root, method, names, seeds))
  return out


def summary(rows: Sequence[dict]) -> dict:
  """Over all rows: single-split choices, how many differ from the pooled choice, how many
  rows' first-seed choice (the suite's default protocol, --tune_seeds=0) differs, and the
  mean and largest |test(first-seed choice) - test(pooled choice)|."""
  first = [next(iter(r["single"])) for r in rows]
  d0 = [abs(r["single_test"][s] - r["pooled_test"]) for r, s in zip(rows, first)]
  return dict(choices=sum(len(r["single"]) for r in rows),
              flips=sum(r["flips"] for r in rows), rows=len(rows),
              loo_choices=sum(len(r["leave_one_out"]) for r in rows),
              loo_flips=sum(r["loo_flips"] for r in rows),
              first_differs=sum(r["single"][s] != r["pooled"] for r, s in zip(rows, first)),
              mean_abs_test_change=float(np.mean(d0)) if d0 else 0.0,
              max_abs_test_change=float(np.max(d0)) if d0 else 0.0)


def markdown(pair_rows: dict[str, list[dict]], num_val: dict[str, int]) -> str:
  """One line per (pair, method); then the totals."""
  lines = []
  for pair, rows in pair_rows.items():
    for r in rows:
      if not lines:
        seeds = " / ".join(map(str, r["single"]))
        lines = [f"| pair | method | candidates | chosen on the split of seed {seeds} alone "
                 "(val margin, pp) | chosen on the pooled splits (margin) | flips: single "
                 "splits, all splits but one | test acc. (%) of the first seed's choice → "
                 "pooled choice |", "|---|---|---|---|---|---|---|"]
      singles = " / ".join(f"{c} ({100 * r['single_margin'][s]:.1f})"
                           for s, c in r["single"].items())
      s0 = next(iter(r["single"]))
      lines.append(f"| {pair} | {r['method']} | {len(r['candidates'])} | {singles} | "
                   f"{r['pooled']} ({100 * r['pooled_margin']:.1f}) | {r['flips']}, "
                   f"{r['loo_flips'] if r['leave_one_out'] else '–'} | "
                   f"{100 * r['single_test'][s0]:.2f} → {100 * r['pooled_test']:.2f} |")
  every = [r for rows in pair_rows.values() for r in rows]
  t = summary(every)
  vals = ", ".join(f"{p}: one example = {100 / n:.1f} pp" for p, n in num_val.items())
  lines += ["", f"Totals: {t['flips']} of {t['choices']} single-split choices differ from "
            f"the pooled choice"
            + (f" ({t['loo_flips']} of {t['loo_choices']} choices on all splits but one "
               f"do)" if t["loo_choices"] else "") +
            f"; the first seed's choice (the suite's `--tune_seeds=0`) differs in "
            f"{t['first_differs']} of {t['rows']} methods, changing the reported test "
            f"accuracy by {100 * t['mean_abs_test_change']:.2f} pp on average (at most "
            f"{100 * t['max_abs_test_change']:.2f} pp). Validation split per seed: {vals}."]
  return "\n".join(lines)


PROG = "merlin_jax.experiments.selection_noise"


def run(pairs: Sequence[str], workdir: str, methods: Sequence[str], seeds: Sequence[int],
        grid_specs: Sequence[str]) -> str:
  """The table for `pairs` (config files) from the suite runs under workdir/<pair>."""
  from merlin_jax import errors
  from merlin_jax.config_base import load_config
  if len(seeds) < 2:
    raise errors.UserError("--seeds: needs at least two seeds (one split per seed)")
  grids = selection.parse_grid(grid_specs)
  pair_rows, num_val = {}, {}
  for pair in pairs:
    name = os.path.splitext(os.path.basename(pair.partition(":")[0]))[0]
    base = load_config(pair)
    try:
      pair_rows[name] = pair_noise(base, os.path.join(workdir, name), methods, seeds, grids)
    except selection.NotFinished as e:
      raise errors.UserError(
          f"run {e} has not finished (every grid setting must have run on every seed): run "
          + SUITE_COMMAND.format(pair=pair, workdir=workdir)) from None
    num_val[name] = int(base.data.target.num_val)
  return markdown(pair_rows, num_val)


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  print(run(f.pairs, f.workdir, f.methods, [int(s) for s in f.seeds], f.grid))


if __name__ == "__main__":
  from absl import app, flags
  from merlin_jax import boundary
  from merlin_jax.experiments import suite_lib
  flags.DEFINE_string("workdir", "/tmp/merlin/suite", "The suite's root of all runs.")
  flags.DEFINE_list("pairs", ["configs/digits.py"], "Config files, one per pair.")
  flags.DEFINE_list("methods", ["joint", "l2sp", "bss", "co_tuning", "delta", "merlin",
                                "merlin_ft"], "Methods (those without a grid are skipped).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: one validation split each.")
  flags.DEFINE_multi_string("grid", suite_lib.DEFAULT_GRID, "The suite's grid.")
  app.run(boundary.entry(PROG, main), flags_parser=boundary.flags_parser(PROG))
