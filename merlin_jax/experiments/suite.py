r"""The Table 1 analogues on offline pairs: every method x seed x pair, one command.

  python -m merlin_jax.experiments.suite --workdir=/tmp/merlin/suite --workspace=WORKSPACE.md

(defaults: the three pairs, nine methods, seeds 0,1,2, 200 steps, DEFAULT_GRID tuned on
seed 0; one single-threaded process per pair side by side on a 2-core CPU took 62, 109 and
66 min, WORKSPACE.md issue 31). For each pair (a config file), runs `merlin_jax.compare`
(methods x seeds, a small grid chosen on target validation) with the outer-step budget
scaled to `--steps` (pre-training gets the same budget), then writes a markdown table
(target test accuracy, mean ± std over seeds) and one plot per pair (target validation
accuracy over steps, mean over seeds) into the WORKSPACE file between the markers
`<!-- suite:begin -->` and `<!-- suite:end -->`. Runs are resumable: rerunning the command
reuses finished runs. A failed run is a row of its table; the suite goes on, writes, and
exits 3 with one line naming the failed runs (a rerun retries only those).

The command line only; the library is merlin_jax/experiments/suite_lib.py.
"""

from absl import app, flags, logging

from merlin_jax.experiments import suite_lib

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/merlin/suite", "Root of all runs.")
_PAIRS = flags.DEFINE_list("pairs", ["configs/digits.py", "configs/printed_mnist.py",
                                     "configs/fashion_digits.py"],
                           "Config files (file.py[:arg]), one per pair.")
_METHODS = flags.DEFINE_list("methods", ["target_only", "joint", "finetune", "l2sp", "bss",
                                         "co_tuning", "delta", "merlin", "merlin_ft"], "Methods.")
_SEEDS, _STEPS, _EVAL_EVERY, _GRID, _TUNE_SEEDS, _WORKSPACE = suite_lib.define_sweep_flags(
    ["0"], "Seeds the grid runs on; the chosen setting then runs on all --seeds (empty: the "
    "grid runs on all seeds).", "Grid per method (see merlin_jax.compare); chosen on target "
    "val.", "Markdown file to write the results into.")
flags.adopt_module_key_flags(suite_lib)   # --helpshort lists them as this program's
_PLOTS = flags.DEFINE_string("plots", "docs", "Folder for the plots (relative to the workspace).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Log the traceback of each failed run.")


def main(argv):
  del argv
  from merlin_jax.experiments import selection
  from merlin_jax.runtime.metrics import quiet_library_logs
  quiet_library_logs()
  failures = []
  with selection.driver("merlin_jax.experiments.suite"):   # a stop: after the current run
    text = suite_lib.run_suite(
        _PAIRS.value, _METHODS.value, [int(s) for s in _SEEDS.value], _STEPS.value,
        _EVAL_EVERY.value, _GRID.value, _WORKDIR.value, _WORKSPACE.value, _PLOTS.value,
        [int(s) for s in _TUNE_SEEDS.value] or None, _VERBOSE.value, failures)
  print(text)
  logging.info("suite done")
  selection.exit_if_failed("merlin_jax.experiments.suite", failures)   # after the write


if __name__ == "__main__":
  from merlin_jax import boundary
  app.run(boundary.entry("merlin_jax.experiments.suite", main), flags_parser=boundary.flags_parser("merlin_jax.experiments.suite"))
