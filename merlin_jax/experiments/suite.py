r"""The Table 1 analogues on offline pairs: every method x seed x pair, one command.

  python -m merlin_jax.experiments.suite --workdir=/tmp/merlin/suite --workspace=WORKSPACE.md

(defaults: the three pairs, the six methods, seeds 0,1,2, 200 steps, DEFAULT_GRID tuned on
seed 0; 48 min on a 2-core CPU). For each pair (a config file), runs `merlin_jax.compare`
(methods x seeds, a small grid chosen on target validation) with the outer-step budget
scaled to `--steps` (pre-training gets the same budget), then writes a markdown table
(target test accuracy, mean ± std over seeds) and one plot per pair (target validation
accuracy over steps, mean over seeds) into the WORKSPACE file between the markers
`<!-- suite:begin -->` and `<!-- suite:end -->`. Runs are resumable: rerunning the command
reuses finished runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from merlin_jax import compare
from merlin_jax.metrics import JSONL, quiet_library_logs, read_jsonl

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"

# One value at a time around each config (ours): the paper gives none of these values.
DEFAULT_GRID = [
    "joint:alpha=0.3,0.7",
    "l2sp:alpha=0.05,5", "l2sp:beta=0.1",
    "merlin:rho=0.3,3", "merlin:inner.steps=5,50", "merlin:inner.lr=0.5",
    "merlin:split.train_size=150;split.val_size=50",
    "merlin_ft:inner.steps=5,50", "merlin_ft:inner.lr=0.5",
]


def load_config(path: str):
  name, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location(f"suite_cfg_{abs(hash(name))}", name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def scaled(config, steps: int, eval_every: int):
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
  later = []  # accuracies after the first evaluation: the y-range shows where methods differ
  for row in rows:
    steps, acc = val_curves(root, row)
    mean, std = acc.mean(0), acc.std(0)
    ax.plot(steps, 100 * mean, marker=".", label=row["method"])
    ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), alpha=0.15)
    later.extend(100 * (mean - std)[1:])
  if later:
    ax.set_ylim(max(0.0, min(later) - 3), 100)
  ax.set_xlabel("outer step")
  ax.set_ylabel("target validation accuracy (%)")
  ax.set_title(name)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_section(workspace: str, text: str) -> None:
  body = open(workspace).read() if os.path.exists(workspace) else ""
  block = f"{BEGIN}\n{text}\n{END}"
  if BEGIN in body and END in body:
    body = body[:body.index(BEGIN)] + block + body[body.index(END) + len(END):]
  else:
    body = body.rstrip("\n") + "\n\n" + block + "\n"
  with open(workspace, "w") as f:
    f.write(body)


def run_suite(pairs, methods, seeds, steps, eval_every, grid_specs, root, workspace="",
              plots="docs", tune_seeds=None) -> str:
  grids = compare.parse_grid(grid_specs)
  sections = []
  total_minutes = []
  for pair in pairs:
    name = os.path.splitext(os.path.basename(pair.partition(":")[0]))[0]
    config = scaled(load_config(pair), steps, eval_every)
    pair_root = os.path.join(root, name)
    t = time.time()
    rows = compare.compare(config, pair_root, methods, seeds, grids, tune_seeds)
    minutes = add_wall_minutes(pair_root, (time.time() - t) / 60)
    total_minutes.append(minutes)
    text = [f"#### {name} (`{pair}`)", "", compare.markdown_table(rows), "",
            "Grid (target val accuracy per setting, mean over tuning seeds "
            f"{', '.join(map(str, tune_seeds or seeds))}; the selected one in bold): " + "; ".join(
                f"{r['method']}: " + ", ".join(
                    (f"**{k} {100 * v:.1f}**" if k == r["setting"] else f"{k} {100 * v:.1f}")
                    for k, v in r["grid"].items())
                for r in rows if r["grid"]), "",
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


def add_wall_minutes(pair_root: str, minutes: float) -> float:
  """Adds this invocation's minutes to the pair's running total (a resumed suite counts
  the time of every invocation, not only the last one); returns the total."""
  path = os.path.join(pair_root, "wall_minutes.json")
  total = minutes
  if os.path.exists(path):
    with open(path) as f:
      total += json.load(f)["minutes"]
  with open(path, "w") as f:
    json.dump({"minutes": total}, f)
  return total


def _write(workspace, pairs, methods, seeds, steps, eval_every, grid_specs, tune_seeds, sections,
           total_minutes) -> str:
  command = ("python -m merlin_jax.experiments.suite " + " ".join(
      [f"--pairs={','.join(pairs)}", f"--methods={','.join(methods)}",
       f"--seeds={','.join(map(str, seeds))}", f"--steps={steps}", f"--eval_every={eval_every}"]
      + [f"--grid='{g}'" for g in grid_specs]
      + ([f"--tune_seeds={','.join(map(str, tune_seeds))}"] if tune_seeds else [])))
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


def _define_flags():
  """Flags exist only when this module is the program (it is also imported as a library)."""
  global _WORKDIR, _PAIRS, _METHODS, _SEEDS, _STEPS, _EVAL_EVERY, _GRID, _TUNE_SEEDS, _WORKSPACE
  global _PLOTS
  _WORKDIR = flags.DEFINE_string("workdir", "/tmp/merlin/suite", "Root of all runs.")
  _PAIRS = flags.DEFINE_list("pairs", ["configs/digits.py", "configs/printed_mnist.py",
                                       "configs/fashion_digits.py"], "Config files, one per pair.")
  _METHODS = flags.DEFINE_list("methods", ["target_only", "joint", "finetune", "l2sp", "merlin",
                                           "merlin_ft"], "Methods.")
  _SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  _STEPS = flags.DEFINE_integer("steps", 200, "Outer steps per run (and for pre-training).")
  _EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Target-validation evaluation period.")
  _GRID = flags.DEFINE_multi_string("grid", DEFAULT_GRID,
                                    "Grid per method (see merlin_jax.compare); chosen on target val.")
  _TUNE_SEEDS = flags.DEFINE_list("tune_seeds", ["0"], "Seeds the grid runs on; the chosen setting "
                                  "then runs on all --seeds (empty: the grid runs on all seeds).")
  _WORKSPACE = flags.DEFINE_string("workspace", "", "Markdown file to write the results into.")
  _PLOTS = flags.DEFINE_string("plots", "docs", "Folder for the plots (relative to the workspace).")


def main(argv):
  del argv
  quiet_library_logs()
  from merlin_jax import errors
  try:
    text = run_suite(_PAIRS.value, _METHODS.value, [int(s) for s in _SEEDS.value], _STEPS.value,
                     _EVAL_EVERY.value, _GRID.value, _WORKDIR.value, _WORKSPACE.value,
                     _PLOTS.value, [int(s) for s in _TUNE_SEEDS.value] or None)
  except errors.UserError as e:
    print(f"merlin_jax.experiments.suite: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(text)
  logging.info("suite done")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
