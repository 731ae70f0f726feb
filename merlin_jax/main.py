r"""Command line: parse flags, call `train.train_and_evaluate(config, workdir)`.

  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/merlin/digits
  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/x \
      --config.method=joint --config.seed=1

Bad input (unknown method or config key, a wrong flag type, a missing config file, missing
data, ...) prints ONE line `merlin_jax: error: ...` naming the fix on stderr and exits with
status 2; `--verbose` shows the traceback. Exit status:
  0   done (WORKDIR/metrics.jsonl ends with the final metrics)
  2   bad input: nothing already in the workdir was changed
  3   a loss or gradient became NaN/inf: stopped, the last good checkpoint is kept
  75  preempted (SIGTERM, or Ctrl-C once): a checkpoint of the current step was saved;
      rerun the same command to resume (EX_TEMPFAIL)
  130 Ctrl-C twice: stopped at once, nothing saved since the last checkpoint
A killed run (kill -9, a crash) also resumes from its last checkpoint when rerun.
"""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from merlin_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py), optionally `file.py:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports: "
                                "a local path or a URI such as gs://BUCKET/dir.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks on errors.")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process runs (merlin_jax/runtime/distributed.py; launch/ has the commands for
# pods/clusters).
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", ["auto", "on", "off"], "jax.distributed.initialize: auto = when "
    "--coordinator_address/JAX_COORDINATOR_ADDRESS is set or SLURM/Open MPI/a TPU pod is detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (explicit multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DIST_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300,
                                     "Seconds to wait for all processes to join.")


BAD_INPUT_EXIT_CODE = 2
NON_FINITE_EXIT_CODE = 3
PREEMPTED_EXIT_CODE = errors.PREEMPTED_EXIT_CODE
INTERRUPTED_EXIT_CODE = 130   # 128 + SIGINT, as a shell reports it


def _fail(message: str, code: int = BAD_INPUT_EXIT_CODE):
  """One line on stderr (newlines inside the message are folded), then exit."""
  logging.flush()
  line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
  print(f"merlin_jax: error: {line}", file=sys.stderr, flush=True)
  sys.exit(code)


def _flag_error(e: Exception, argv) -> str:
  overrides = [a for a in argv[1:] if a.startswith(("--config.", "-config."))]
  path = next((a.split("=", 1)[1] for a in argv[1:]
               if a.startswith(("--config=", "-config="))), "?")
  text = str(e)
  if "get_config" in text and isinstance(e, AttributeError):   # the file is not a config
    return f"cannot load --config={path}: the file defines no get_config()"
  if "Traceback (most recent call last)" in text:   # get_config itself raised
    last = [l.strip() for l in text.splitlines() if l.strip()][-1]
    return f"cannot load --config={path}: its get_config() raised {last}"
  if isinstance(e, (AttributeError, KeyError)):   # ml_collections: an unknown key
    text = str(e).replace("\\n", "\n")
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
    key = names[0] if names else "?"
    arg = next((a for a in overrides if key in a.split("=")[0].split(".")), None)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    hint = f"did you mean {hint.group(1)!r}? " if hint else ""
    return (f"{arg or 'a --config.* flag'}: unknown config key {key!r} ({hint}the keys are "
            "those of merlin_jax/config_base.py)")
  if isinstance(e, OSError):                       # the config file: missing or failing
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return f"cannot load --config={path}: {lines[-1] if lines else type(e).__name__}"
  return str(e)                                    # absl's flags.Error: names the flag


def parse_flags(argv):
  """absl's flag parsing, but a bad flag or config prints one line (status 2), no traceback."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.keys()  # a missing or failing config file raises here, not mid-run
    return rest
  except Exception as e:  # noqa: BLE001 - flags.Error, OSError, AttributeError, ...
    if any(a in ("--verbose", "-verbose", "--verbose=true", "--verbose=1") for a in argv):
      raise
    _fail(_flag_error(e, argv))


def run(argv=None):
  app.run(main, argv=argv, flags_parser=parse_flags)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  from merlin_jax.runtime.metrics import quiet_library_logs
  quiet_library_logs()
  from merlin_jax import train  # after flag parsing: fast --help
  from merlin_jax.runtime import distributed
  try:
    distributed.initialize(distributed.Settings.from_env(
        _MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        timeout_s=_DIST_TIMEOUT.value))
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt:   # Ctrl-C twice (once saves a checkpoint: Preempted below)
    _fail("interrupted (second Ctrl-C): stopped without saving; rerun the same command to "
          "resume from the last checkpoint", INTERRUPTED_EXIT_CODE)
  except errors.Preempted as e:   # not an error: the run continues when rerun
    logging.flush()
    print(f"merlin_jax: {e}", file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  except (errors.UserError, errors.NonFiniteLossError) as e:
    if _VERBOSE.value:
      raise
    _fail(e, NON_FINITE_EXIT_CODE if isinstance(e, errors.NonFiniteLossError)
          else BAD_INPUT_EXIT_CODE)


if __name__ == "__main__":
  run()
