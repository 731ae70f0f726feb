"""Preemption notices: SIGTERM (or Ctrl-C, SIGINT) sets a flag; the train loop checks it
once per step. A second Ctrl-C raises KeyboardInterrupt at once (nothing saved then).

The handler only records the signal (nothing else is safe inside a handler); the train loop
calls `requested()` after each step, saves a checkpoint of that step and raises
`errors.Preempted`, and `main` exits with status 75 (EX_TEMPFAIL: rerun to resume).
With several processes every process must stop at the same step (the save is collective), so
`requested()` is true on all of them as soon as any one got the signal.
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
  """Install the SIGTERM handler for the block (nested blocks share one flag)."""
  global _depth
  if threading.current_thread() is not threading.main_thread():  # signal() would fail
    yield
    return
  global _signum
  if _depth == 0:
    _requested.clear()
    _signum = None
  previous = {s: signal.signal(s, _handler) for s in SIGNALS}
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


def request() -> None:
  """What the handler does (tests / programmatic stops)."""
  _requested.set()


def requested() -> bool:
  """True when this process (or, with several processes, any process) got the signal."""
  import jax
  local = _requested.is_set()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(local))))
