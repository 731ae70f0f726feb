r"""Command line: parse flags, call `train.train_and_evaluate(config, workdir)`.

  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/merlin/digits
  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/x \
      --config.method=joint --config.seed=1

Bad input (unknown method, missing data, ...) prints one line naming the fix and exits
with status 2; `--verbose` shows the traceback.
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py), optionally `file.py:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks on errors.")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process runs (merlin_jax/distributed.py; launch/ has the commands for pods/clusters).
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", ["auto", "on", "off"], "jax.distributed.initialize: auto = when "
    "--coordinator_address/JAX_COORDINATOR_ADDRESS is set or SLURM/Open MPI/a TPU pod is detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (explicit multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DIST_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300,
                                     "Seconds to wait for all processes to join.")


class _QuietLibraries(pylogging.Filter):
  """Hide the INFO chatter of orbax/tensorflow_datasets; warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "etils"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from merlin_jax import errors, train  # after flag parsing: fast --help
  from merlin_jax import distributed
  try:
    distributed.initialize(distributed.Settings.from_env(
        _MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        timeout_s=_DIST_TIMEOUT.value))
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (errors.UserError, errors.NonFiniteLossError) as e:
    if _VERBOSE.value:
      raise
    logging.flush()
    print(f"merlin_jax: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
