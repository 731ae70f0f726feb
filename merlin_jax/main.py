r"""Command line: parse flags, call `train.train_and_evaluate(config, workdir)`.

  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/merlin/digits
  python -m merlin_jax.main --config=configs/digits.py --workdir=/tmp/x \
      --config.method=joint --config.seed=1
  python -m merlin_jax.main --config=configs/food_cub.py --compile_only=v5e:2x4
      (no training: compiles for that TPU topology and says whether it fits; exit 2 with
      what to change when it does not; merlin_jax/compile_check.py)

Bad input (unknown method or config key, a wrong flag type, a missing config file, missing
data, ...) prints ONE line `merlin_jax: error: ...` naming the fix on stderr and exits with
status 2; `--verbose` shows the traceback. Exit status:
  0   done (WORKDIR/metrics.jsonl ends with the final metrics)
  2   bad input: nothing already in the workdir was changed
  3   a loss or gradient became NaN/inf: stopped, the last good checkpoint is kept
  74  storage unreachable, full or read-only (a gs:// bucket, a full disk, `ulimit -f`):
      the last good checkpoint is kept; fix the storage and rerun the same command to resume
  75  preempted (SIGTERM, or Ctrl-C once): a checkpoint of the current step was saved;
      rerun the same command to resume (EX_TEMPFAIL)
  130 Ctrl-C twice: stopped at once, nothing saved since the last checkpoint
  1   a bug in merlin_jax: one line too (--verbose for the traceback)
A stop (SIGTERM, Ctrl-C) is answered within MERLIN_JAX_STOP_GRACE_S seconds (default 25) even
when the run is stuck, e.g. on storage that does not answer: then exit 75 without saving.
A killed run (kill -9, a crash) also resumes from its last checkpoint when rerun. With
several processes, one that dies makes the others stop within seconds with status 75
(merlin_jax/runtime/lifeline.py).
"""

import re
import sys

# The command line's first steps, before the imports below (this module and preemption.py
# import the standard library only, so no thread exists yet):
# 1. restart once with malloc on transparent huge pages where that helps (~20% of a CPU
#    step was page faults; merlin_jax/runtime/host_memory.py), with SIGTERM / SIGINT held
#    across the restart;
# 2. signals: a SIGTERM / Ctrl-C in the first instants is recorded and ends the run with
#    exit 75 and a message, not 143 and nothing.
# (As a program only: imported, e.g. by tests, it leaves the process alone.)
from merlin_jax.runtime import host_memory, preemption  # noqa: E402


_started = False


def _start():
  global _started
  if _started:   # python -m: done at import, before the heavy imports
    return
  _started = True
  host_memory.reexec_with_hugepages()
  preemption.install_early()
  host_memory.release_signals()   # a stop that came during the restart reaches the handler


if __name__ == "__main__":
  _start()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from merlin_jax import boundary, errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py), optionally `file.py:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports: "
                                "a local path or a URI such as gs://BUCKET/dir.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks on errors.")
_COMPILE_ONLY = flags.DEFINE_string(
    "compile_only", None, "Compile the config for an accelerator instead of training, and say "
    "whether it fits: a TPU topology (v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x2; v5e:1 = one "
    "chip; needs the tpu extra) or cpu:N. Exit 2 when it does not fit. No --workdir needed.")
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
    ["workdir", "compile_only"], lambda f: f["workdir"] is not None or bool(f["compile_only"]),
    message="--workdir must have a value (or give --compile_only=TOPOLOGY)")
# Multi-process runs (merlin_jax/runtime/distributed.py; launch/ has the commands for pods/clusters).
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
    from merlin_jax import config_names
    hint = f" ({config_names.missing_hint()})" if "No such file" in str(e) else ""
    return f"cannot load --config={path}: {lines[-1] if lines else type(e).__name__}{hint}"
  return str(e)                                    # absl's flags.Error: names the flag


def parse_flags(argv):
  """absl's flag parsing, but a bad flag or config prints one line (status 2), no traceback."""
  from merlin_jax import config_names
  try:
    rest = flags.FLAGS(config_names.resolve_argv(argv))   # --config=NAME: a shipped config
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
  from merlin_jax.runtime import lifeline
  try:
    _main(argv)
  finally:
    # A run that ends in order (done, 75, 2, 3, 130: all SystemExit here) tells the other
    # processes so; one that crashes does not, and they stop at once with status 75.
    if sys.exc_info()[1] is None or isinstance(sys.exc_info()[1], SystemExit):
      lifeline.disarm()


def _main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  from merlin_jax.runtime.metrics import quiet_library_logs
  quiet_library_logs()
  if _COMPILE_ONLY.value:
    _compile_only(_CONFIG.value, _COMPILE_ONLY.value)
    return
  # The error boundary (merlin_jax/boundary.py): every failure is one line and an exit
  # status of the docstring's table.
  with boundary.cli("merlin_jax", where=_WORKDIR.value):
    from merlin_jax import run_report   # a first line before the slow imports and loading
    logging.info("%s", run_report.start_line(_CONFIG.value, _WORKDIR.value))
    if host_memory.active():
      logging.info("malloc on transparent huge pages (GLIBC_TUNABLES=%s; "
                   "MERLIN_JAX_HUGEPAGES=0 turns this off)", host_memory.TUNABLE)
    from merlin_jax import train  # after flag parsing: fast --help
    from merlin_jax.runtime import distributed
    distributed.initialize(distributed.Settings.from_env(
        _MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        timeout_s=_DIST_TIMEOUT.value))
    from merlin_jax.runtime import lifeline
    lifeline.arm_from_jax(_DIST_TIMEOUT.value)   # a dead process: the others exit 75 at once
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _compile_only(config, target: str):
  """--compile_only: the report on stdout; exit 2 with one line when it does not fit."""
  from merlin_jax import compile_check
  try:
    report = compile_check.check(config, target)
  except errors.UserError as e:
    if _VERBOSE.value:
      raise
    _fail(e)
  print("\n".join(report.lines()), flush=True)
  if report.fits is False:
    _fail(report.advice())


def cli():
  """`python -m merlin_jax.main` and the console command `merlin-train`: the same program."""
  _start()                    # merlin-train's first steps (python -m took them at import)
  preemption.arm_watchdog()   # a stop ends the process within a bound, even when stuck
  boundary.HARD_EXIT_ON_STORAGE_FAULT = True
  run()


if __name__ == "__main__":
  cli()
