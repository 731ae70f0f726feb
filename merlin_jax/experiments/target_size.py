r"""When does MeRLin help? Gain over fine-tuning against the target-set size, one command.

  python -m merlin_jax.experiments.target_size --workdir=/tmp/merlin/target_size \
      --workspace=WORKSPACE.md

(defaults: the digits and Fashion-MNIST -> digits pairs, n = 50, 100, 200, 500, 800 target
labels (the scikit-learn digits train split has ~1,000, validation included), MeRLin,
MeRLin-ft, fine-tuning, L2-SP and DELTA, seeds 0, 1, 2, 200 outer steps, the suite's grid
chosen on target validation averaged over all three seeds). Writes the table
(test accuracy, paired gain over fine-tuning, wall time and steps to the selected model)
and a plot of the gain against n (error bars: 95% t-interval over seeds) into the WORKSPACE file
between `<!-- target_size:begin -->` and `<!-- target_size:end -->`. Resumable: a rerun
reuses finished runs; SIGTERM stops it after saving the current run (exit 75), and
`--finished_only` tables what has finished without training anything (a look at a running
or partial sweep). See merlin_jax/experiments/target_size_lib.py.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from merlin_jax import errors
from merlin_jax.experiments import selection, suite_lib, target_size_lib
from merlin_jax.runtime.metrics import quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/merlin/target_size", "Root of all runs.")
_PAIRS = flags.DEFINE_list("pairs", ["configs/digits.py", "configs/fashion_digits.py"],
                           "Config files (file.py[:arg]), one per pair.")
_SIZES = flags.DEFINE_list("sizes", ["50", "100", "200", "500", "800"],
                           "Target-set sizes n (data.target.num_train).")
_NUM_VAL = flags.DEFINE_integer("num_val", None, "Target validation examples (default: the "
                                "config's); larger resolves smaller differences.")
_METHODS = flags.DEFINE_list("methods", ["finetune", "l2sp", "delta", "merlin", "merlin_ft"],
                             "Methods (must include finetune, the baseline of the gains).")
_SEEDS, _STEPS, _EVAL_EVERY, _GRID, _TUNE_SEEDS, _WORKSPACE = suite_lib.define_sweep_flags(
    [], "Seeds every grid setting runs on, its validation accuracy averaged over them (empty: "
    "all seeds; each seed draws its own train/val split).", "method:key=v1,v2[;key2=...], "
    "chosen on target validation.", "Markdown file to write the section into.")
flags.adopt_module_key_flags(suite_lib)   # --helpshort lists them as this program's
_FINISHED_ONLY = flags.DEFINE_bool(
    "finished_only", False, "Train nothing: report the (pair, n) cells whose runs have all "
    "finished and name the others (a look at a running or partial sweep).")
_PLOT = flags.DEFINE_string("plot", "docs/target_size.png", "Plot path (beside the workspace).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Log the traceback of each failed run.")


def main(argv):
  del argv
  quiet_library_logs()
  t = time.time()
  missing = [] if _FINISHED_ONLY.value else None
  failures = []
  with selection.driver("merlin_jax.experiments.target_size"):   # a stop: after this run
    records = target_size_lib.sweep(
        _PAIRS.value, [int(n) for n in _SIZES.value], _METHODS.value,
        [int(s) for s in _SEEDS.value], _STEPS.value, _EVAL_EVERY.value, _GRID.value,
        _WORKDIR.value, _NUM_VAL.value, [int(s) for s in _TUNE_SEEDS.value] or None, missing,
        _VERBOSE.value, failures)
    if not records:
      raise errors.UserError(f"no (pair, n) cell in {_WORKDIR.value} has finished; run the "
                             "same command without --finished_only")
  minutes = (suite_lib.wall_minutes(_WORKDIR.value) if missing is not None else
             suite_lib.add_wall_minutes(_WORKDIR.value, (time.time() - t) / 60))
  table = target_size_lib.markdown(records)
  if missing:
    table += ("\n\nNot run (unfinished runs; the same command without --finished_only runs "
              "them): " + ", ".join(f"{pair} n = {n}" for pair, n in missing) + ".")
  print(table)
  if _WORKSPACE.value:
    plot = os.path.join(os.path.dirname(os.path.abspath(_WORKSPACE.value)), _PLOT.value)
    os.makedirs(os.path.dirname(plot), exist_ok=True)
    target_size_lib.plot(records, plot)
    command = target_size_lib.command(_PAIRS.value, _SIZES.value, _METHODS.value,
                                      _SEEDS.value, _STEPS.value, _NUM_VAL.value,
                                      _TUNE_SEEDS.value)
    text = (f"Command: `{command}`; "
            f"total wall time {minutes:.1f} min (summed over invocations).\n\n{table}\n\n"
            f"![gain over fine-tuning against n]({_PLOT.value})")
    suite_lib.write_section(_WORKSPACE.value, text, target_size_lib.BEGIN, target_size_lib.END)
  selection.exit_if_failed("merlin_jax.experiments.target_size", failures)   # after the write


if __name__ == "__main__":
  from merlin_jax import boundary
  app.run(boundary.entry("merlin_jax.experiments.target_size", main), flags_parser=boundary.flags_parser("merlin_jax.experiments.target_size"))
