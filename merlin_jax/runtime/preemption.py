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
import signal
import threading

import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested = threading.Event()
_depth = 0
_signum = None


def _handler(signum, frame):  # noqa: ARG001 - signal handler signature
  global _signum
  if signum == signal.SIGINT and _requested.is_set():
    raise KeyboardInterrupt   # Ctrl-C twice: the user does not want to wait for the save
  _signum = _signum or signum
  _requested.set()


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
  if _depth == 0:
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
    if _depth == 0:
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
  return bool(np.any(multihost_utils.process_allgather(np.int32(local))))
