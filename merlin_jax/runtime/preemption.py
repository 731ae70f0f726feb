"""Preemption notices: SIGTERM (or Ctrl-C, SIGINT) sets a flag; the train loop checks it
after every step. A second Ctrl-C raises KeyboardInterrupt at once (nothing saved then).

The handler only records the signal (nothing else is safe inside a handler); the train loop
calls `requested(step, sync)` after each step, saves a checkpoint of that step and raises
`errors.Preempted`, and `main` exits with status 75 (EX_TEMPFAIL: rerun to resume).

With several processes every process must stop at the same step (the save is collective):
- SIGTERM goes to JAX's own preemption service (`jax_enable_preemption_service`, on by
  default; its notifier owns SIGTERM, so no Python handler is installed for it): when any
  process gets it, the processes agree in the background on a step, and
  `multihost_utils.reached_preemption_sync_point(step)` (a local check, no round trip) turns
  true on all of them at that step.
- SIGINT (and SIGTERM where the service is off) set the local flag, which is gathered across
  processes only at the loop's sync points (every `log_every` steps, evaluations,
  checkpoints): one collective per window, not per step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested = threading.Event()
_depth = 0
_signum = None
_early = False      # install_early(): a signal before handle_signals() is kept, not cleared
_grace_s = None     # arm_watchdog(): the bound on the time from a stop to the exit
_abort = None       # abort(): an error the train loop raises at its next check


def _handler(signum, frame):  # noqa: ARG001 - signal handler signature
  global _signum
  if signum == signal.SIGINT and _requested.is_set():
    raise KeyboardInterrupt   # Ctrl-C twice: the user does not want to wait for the save
  _signum = _signum or signum
  _requested.set()
  _start_watchdog(75, f"stop requested ({signal.Signals(signum).name}) {{grace}} s ago, but "
                  "the run did not reach a point where it can save (storage not answering?); "
                  "exited without saving: rerun the same command to resume from the last "
                  "checkpoint")


def install_early() -> None:
  """The first thing a command line does (merlin_jax/main.py, before its heavy imports): a
  SIGTERM or Ctrl-C from the first instant is recorded, and the run stops at its next check
  with exit 75 instead of dying with 143 and no message."""
  global _early
  if threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, _handler)
    _early = True


def arm_watchdog(grace_s: float | None = None) -> None:
  """Bounds the time from a stop (a signal, `abort`) to the exit: a process whose main thread
  is stuck (e.g. in a storage call retrying for minutes) exits after `grace_s` seconds
  (MERLIN_JAX_STOP_GRACE_S, default 25: inside a preemption's ~30 s notice) with one line.
  Command lines only: it ends the process."""
  global _grace_s
  _grace_s = float(os.environ.get("MERLIN_JAX_STOP_GRACE_S", 25) if grace_s is None
                   else grace_s)


def _start_watchdog(code: int, line: str) -> None:
  if _grace_s is None:
    return
  grace = _grace_s

  def expire():
    print(f"merlin_jax: {'error: ' if code != 75 else ''}{line.format(grace=f'{grace:.0f}')}",
          file=sys.stderr, flush=True)
    os._exit(code)   # the main thread is stuck: nothing else would end the process

  timer = threading.Timer(grace, expire)
  timer.daemon = True
  timer.start()


def abort(error: Exception, code: int) -> None:
  """From a background thread (the object-lock renewal): make the run stop with `error` at
  its next check (`check_abort`), and exit with `code` after the grace period if it is stuck."""
  global _abort
  if _abort is None:
    _abort = error
    _start_watchdog(code, str(error) + " (the run was stuck; exited after {grace} s)")


def check_abort() -> None:
  """Raises the error of `abort`, if any (the train loop calls it after every step)."""
  if _abort is not None:
    raise _abort


def signal_name() -> str:
  """The signal that asked to stop ('SIGTERM' when set by `request()`)."""
  return signal.Signals(_signum or signal.SIGTERM).name


@contextlib.contextmanager
def handle_signals():
  """Install the handlers for the block (nested blocks share one flag); with several
  processes and JAX's preemption service, SIGTERM stays with JAX (module docstring)."""
  global _depth
  if threading.current_thread() is not threading.main_thread():  # signal() would fail
    yield
    return
  global _signum
  if _depth == 0 and not _early:
    _requested.clear()
    _signum = None
  previous = {s: signal.signal(s, _handler) for s in SIGNALS
              if not (s == signal.SIGTERM and jax_owns_sigterm())}
  _depth += 1
  try:
    yield
  finally:
    _depth -= 1
    for s, h in previous.items():
      signal.signal(s, h)
    if _depth == 0 and not _early:
      _requested.clear()
      _signum = None


def is_requested() -> bool:
  """This process got the signal (no cross-process gather: for decisions between runs)."""
  return _requested.is_set()


def request() -> None:
  """What the handler does (tests / programmatic stops)."""
  _requested.set()


def jax_owns_sigterm() -> bool:
  """Several processes joined with JAX's preemption service on: its notifier takes SIGTERM."""
  import jax
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


def requested(step: int, sync: bool = True) -> bool:
  """After `step`: true when this process (with several processes: any process) got the
  signal. With several processes the same on every process; `sync=False` (not a sync point
  of the loop) skips the cross-process gather of the SIGINT flag (module docstring)."""
  import jax
  global _signum
  local = _requested.is_set()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  if jax_owns_sigterm() and multihost_utils.reached_preemption_sync_point(step):
    _signum = _signum or signal.SIGTERM
    return True
  if not sync:
    return False
  import numpy as np   # here: importing this module starts no thread (host_memory.py)
  return bool(np.any(multihost_utils.process_allgather(np.int32(local))))
