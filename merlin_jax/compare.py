r"""Run several methods (and seeds, and a small hyperparameter grid) on one config; print a table.

  python -m merlin_jax.compare --config=configs/digits.py --workdir=/tmp/merlin/compare \
      --methods=target_only,joint,finetune,l2sp,merlin,merlin_ft --seeds=0,1,2 \
      --grid='joint:alpha=0.1,0.5,0.9' --grid='merlin:rho=0.3,1,3' \
      --grid='merlin:inner.steps=5,50' --tune_seeds=0

Each run goes to WORKDIR/<method>/<setting>/seed_<s> (resumable: a finished run is read
back, not re-run). The two-stage methods (every method with `needs_pretrained`) share one `pretrain`
run per seed (WORKDIR/pretrain/default/seed_<s>) unless the config sets pretrained.path.

Grids: one `--grid` is a product over its axes; several `--grid`s for one method are a
union (so `--grid='merlin:rho=0.3,3' --grid='merlin:inner.steps=5,50'` varies one value at
a time around the config). A key set to the config's own value is dropped, so the config's
setting is always a candidate, is named `default` and wins ties. For each method, the
setting with the best mean *target validation* accuracy over the tuning seeds
(`--tune_seeds`, default: all seeds) is selected and then run on every seed; its target
test accuracy is reported as mean ± std over seeds, with its paired difference to fine-tuning
(95% t-interval over seeds) and the val margin of the choice. The test set never takes part
in a choice. A run that diverges or fails is a row of the table ("diverged at step 8: ...");
the others go on, the table is written, and the command exits 3 with one line naming the
failed runs (rerunning it retries only those; --verbose logs their tracebacks).

The command line only; the library is merlin_jax/experiments/selection.py.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from merlin_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py), optionally `file.py:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of all runs.")
_METHODS = flags.DEFINE_list("methods", ["target_only", "joint", "finetune", "l2sp", "bss",
                                         "co_tuning", "delta", "merlin", "merlin_ft"],
                             "Methods to run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_GRID = flags.DEFINE_multi_string(
    "grid", [], "method:key=v1,v2[;key2=...]: values tried for that method, chosen on target val.")
_TUNE_SEEDS = flags.DEFINE_list(
    "tune_seeds", [], "Seeds every grid setting runs on (chosen on their mean target val); "
    "the chosen setting then runs on all --seeds. Empty: all --seeds.")
_OUT = flags.DEFINE_string("out", "", "Also write the markdown table (and a .json) here.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Log the traceback of each failed run.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(e: Exception):
  print(f"merlin_jax.compare: error: {e}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing; a bad config argument (e.g. `x.py:lcoal`) is one line, status 2."""
  from merlin_jax import config_names
  try:
    return flags.FLAGS(config_names.resolve_argv(argv))   # --config=NAME: a shipped config
  except errors.UserError as e:
    _fail(e)


def main(argv):
  del argv
  from merlin_jax.experiments import selection  # after flag parsing: fast --help
  from merlin_jax.runtime.metrics import quiet_library_logs
  quiet_library_logs()
  seeds = [int(s) for s in _SEEDS.value]
  with selection.driver("merlin_jax.compare"):   # a stop: after the current run, exit 75
    tune = [int(s) for s in _TUNE_SEEDS.value] or None
    rows = selection.compare(_CONFIG.value, _WORKDIR.value, _METHODS.value, seeds,
                             selection.parse_grid(_GRID.value), tune, verbose=_VERBOSE.value)
  table = selection.markdown_table(rows)
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(table + "\n")
    with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as f:
      json.dump(rows, f, indent=1)
  logging.info("rows: %s", json.dumps(rows))
  # A failed run is a row of the table, not the end of the comparison: the table is written,
  # then one line names the failed runs (a rerun retries only those) and the status is != 0.
  selection.exit_if_failed("merlin_jax.compare", selection.failed_runs(rows))


if __name__ == "__main__":
  from merlin_jax import boundary   # every failure: one line and its exit status
  app.run(boundary.entry("merlin_jax.compare", main),
          flags_parser=boundary.flags_parser("merlin_jax.compare"))
