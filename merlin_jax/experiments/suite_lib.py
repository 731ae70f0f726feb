r"""The Table 1 analogues on offline pairs: every method x seed x pair, written as a report.

The library behind `python -m merlin_jax.experiments.suite` (the command line; see there).
It defines no flags. For each pair (a config file), `run_suite` runs
`merlin_jax.experiments.selection.compare` (methods x seeds, a small grid chosen on target
validation) with the outer-step budget scaled to `steps` (pre-training gets the same
budget), then writes a markdown table (target test accuracy, mean ± std over seeds) and one
plot per pair (target validation accuracy over steps, mean over seeds) into the WORKSPACE
file between the markers `<!-- suite:begin -->` and `<!-- suite:end -->`. Runs are
resumable: rerunning reuses finished runs.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from merlin_jax.config_base import load_config
from merlin_jax.experiments import selection
from merlin_jax.runtime.metrics import JSONL, read_jsonl

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

# One value at a time around each config (ours): the paper gives none of these values.
WALL_MINUTES = "wall_minutes.json"
DEFAULT_GRID = [
    "joint:alpha=0.3,0.7",
    "l2sp:alpha=0.05,5", "l2sp:beta=0.1",
    "merlin:rho=0.3,3", "merlin:inner.steps=5,50", "merlin:inner.lr=0.5",
    "merlin:split.train_size=150;split.val_size=50",
    "merlin_ft:inner.steps=5,50", "merlin_ft:inner.lr=0.5",
    # BSS on the whole 200-500 example pool: the SmallCNN's features have rank ~180 (dead
    # ReLU units), its smallest singular value is 0 and BSS is fine-tuning (its run warns);
    # at the paper's batch of 48 it has a spectrum to shrink.
    "bss:bss.eta=0.0001,0.01", "bss:target_batch_size=48",
    "delta:delta.alpha=0.001,0.1", "delta:delta.beta=0.1",
    "co_tuning:co_tuning.weight=0.3,3",
]


def scaled(config, steps: int, eval_every: int):
  """The config at a budget of `steps` outer steps (pre-training too), in place."""
  config.total_steps = steps
  config.pretrained.steps = steps
  config.eval.every = min(eval_every, steps)
  config.checkpoint_every = steps
  config.log_every = max(1, min(config.log_every, steps))
  return config


def val_curves(root: str, row: dict) -> tuple[list[int], np.ndarray]:
  """Target validation accuracy over steps for the selected setting, one row per seed."""
  curves = []
  for seed in row["seeds"]:
    records = read_jsonl(os.path.join(root, row["method"], row["setting"], f"seed_{seed}", JSONL))
    points = {r["step"]: r["target_val_accuracy"] for r in records if "target_val_accuracy" in r}
    curves.append(points)
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  return steps, np.array([[c[s] for s in steps] for c in curves])


def plot_pair(name: str, root: str, rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  shown, seeds = [], set()
  for row in rows:
    if row.get("failed"):   # no curve to draw: the table says why
      continue
    steps, acc = val_curves(root, row)
    # Step 0 (the untrained model, near chance) is left out: with it the y-range would hide
    # where the methods differ, and clipped, its lines would start off the axes.
    keep = np.asarray(steps) > 0 if len(steps) > 1 else np.ones(len(steps), bool)
    steps, acc = np.asarray(steps)[keep], acc[:, keep]
    mean, std = acc.mean(0), acc.std(0)
    ax.plot(steps, 100 * mean, marker=".", label=row["method"])
    ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), alpha=0.15)
    shown.extend(100 * (mean - std))
    seeds.add(acc.shape[0])
  if shown:
    ax.set_ylim(max(0.0, min(shown) - 1), 100)   # every point and band is on the axes
  n = "/".join(str(s) for s in sorted(seeds))
  label_axes(ax, "outer step (step 0, the untrained model, not shown)",
             "target validation accuracy (%)",
             f"{name}\nmean over {n} seeds; band = ± 1 std (ddof 0)")
  ax.title.set_fontsize(9)
  save_figure(fig, path)


def label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=8)


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_section(workspace: str, text: str, begin: str = BEGIN, end: str = END) -> None:
  """Replaces what lies between the markers `begin` and `end` (or appends them)."""
  body = open(workspace).read() if os.path.exists(workspace) else ""
  block = f"{begin}\n{text}\n{end}"
  if begin in body and end in body:
    body = body[:body.index(begin)] + block + body[body.index(end) + len(end):]
  else:
    body = body.rstrip("\n") + "\n\n" + block + "\n"
  with open(workspace, "w") as f:
    f.write(body)


def run_suite(pairs, methods, seeds, steps, eval_every, grid_specs, root, workspace="",
              plots="docs", tune_seeds=None, verbose=False, failures=None) -> str:
  """Runs and writes the suite; returns its text. A failed run is a row of its pair's
  table (selection.compare); `failures` (a list), if given, collects the failed runs' names
  ('pair/method/setting/seed_s (reason)') for the command line's exit line."""
  grids = selection.parse_grid(grid_specs)
  check_data(pairs)
  sections = []
  total_minutes = []
  for pair in pairs:
    name = os.path.splitext(os.path.basename(pair.partition(":")[0]))[0]
    config = scaled(load_config(pair), steps, eval_every)
    pair_root = os.path.join(root, name)
    t = time.time()
    rows = selection.compare(config, pair_root, methods, seeds, grids, tune_seeds,
                             verbose=verbose)
    if failures is not None:
      failures.extend(f"{name}/{f}" for f in selection.failed_runs(rows))
    minutes = add_wall_minutes(pair_root, (time.time() - t) / 60)
    total_minutes.append(minutes)
    text = [f"#### {name} (`{pair}`)", "", selection.markdown_table(rows), "",
            "Grid (target val accuracy per setting, mean over tuning seeds "
            f"{', '.join(map(str, tune_seeds or seeds))}; the selected one in bold): " + "; ".join(
                f"{r['method']}: " + ", ".join(
                    (f"**{k} {100 * v:.1f}**" if k == r["setting"] else f"{k} {100 * v:.1f}")
                    for k, v in r["grid"].items())
                + "".join(f", {k} failed" for k in r.get("grid_failed", []))
                for r in rows if r["grid"] or r.get("grid_failed")), "",
            f"Wall time for this pair: {minutes:.1f} min (summed over the invocations that ran it)."]
    if workspace:
      plot_dir = os.path.join(os.path.dirname(os.path.abspath(workspace)), plots)
      os.makedirs(plot_dir, exist_ok=True)
      plot_path = os.path.join(plot_dir, f"suite_{name}.png")
      plot_pair(name, pair_root, rows, plot_path)
      text += ["", f"![{name}: target validation accuracy over steps]({plots}/suite_{name}.png)"]
    sections.append("\n".join(text))
    if workspace:  # after every pair, so a long suite shows its progress
      _write(workspace, pairs, methods, seeds, steps, eval_every, grid_specs, tune_seeds,
             sections, total_minutes)
  return _write(workspace, pairs, methods, seeds, steps, eval_every, grid_specs, tune_seeds,
                sections, total_minutes)


def check_data(pairs) -> None:
  """Every pair's data is prepared, before the first run (else the DataError naming the
  command that prepares it now, not when that pair's first run starts)."""
  from merlin_jax.data import pipeline
  for pair in pairs:
    pipeline.check_prepared(load_config(pair).data)


def wall_minutes(pair_root: str) -> float:
  """The running total of `add_wall_minutes` (0 if none yet)."""
  path = os.path.join(pair_root, WALL_MINUTES)
  if not os.path.exists(path):
    return 0.0
  with open(path) as f:
    return json.load(f)["minutes"]


def add_wall_minutes(pair_root: str, minutes: float) -> float:
  """Adds this invocation's minutes to the pair's running total (a resumed suite counts
  the time of every invocation, not only the last one); returns the total."""
  total = minutes + wall_minutes(pair_root)
  with open(os.path.join(pair_root, WALL_MINUTES), "w") as f:
    json.dump({"minutes": total}, f)
  return total


def _write(workspace, pairs, methods, seeds, steps, eval_every, grid_specs, tune_seeds, sections,
           total_minutes) -> str:
  command = ("python -m merlin_jax.experiments.suite " + " ".join(
      [f"--pairs={','.join(pairs)}", f"--methods={','.join(methods)}",
       f"--seeds={','.join(map(str, seeds))}", f"--steps={steps}", f"--eval_every={eval_every}"]
      + [f"--grid='{g}'" for g in grid_specs]
      + [f"--tune_seeds={','.join(map(str, tune_seeds or []))}"]))   # empty: all seeds
  header = (f"Command: `{command}`\n\nBudget: {steps} outer steps per run (pre-training too), "
            f"target validation every {eval_every} steps; seeds {', '.join(map(str, seeds))}; "
            f"total wall time {sum(total_minutes):.1f} min on this machine (summed over the "
            "invocations that ran it; a rerun reuses finished runs).\n")
  text = header + "\n" + "\n\n".join(sections)
  if len(sections) < len(pairs):
    text += f"\n\n(In progress: {len(sections)} of {len(pairs)} pairs done.)"
  if workspace:
    write_section(workspace, text)
  return text


def define_sweep_flags(tune_seeds: list[str], tune_help: str, grid_help: str,
                       workspace_help: str):
  """The flags the suite and the target-size sweep share, defined by the program that calls
  this at its module level (importing this library defines none): (seeds, steps,
  eval_every, grid, tune_seeds, workspace)."""
  from absl import flags
  out = (flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds."),
         flags.DEFINE_integer("steps", 200, "Outer steps per run (and for pre-training)."),
         flags.DEFINE_integer("eval_every", 50, "Target-validation evaluation period."),
         flags.DEFINE_multi_string("grid", DEFAULT_GRID, grid_help),
         flags.DEFINE_list("tune_seeds", tune_seeds, tune_help),
         flags.DEFINE_string("workspace", "", workspace_help))
  return out
