"""The one error boundary of every public entry point.

The contract (README "Reliability"): a failure that is not a bug in merlin_jax ends in ONE
line naming what is wrong and the fix, with a documented exit status, and nothing already
saved is harmed. Two faces:

* `api` (decorator): the library's public functions (`merlin_jax.load`, `Model.predict`,
  ...) raise a `UserError` subclass with a one-line message; storage and network failures
  from any layer below (gcsfs, aiohttp, tensorstore, the OS) become `StorageError`.
* `cli(prog)` (context manager): the command lines (main, predict, compare, the suite, the
  sweep) print `PROG: error: <one line>` on stderr and exit with the status of `EXIT_CODES`;
  an unexpected exception (a bug) is one line too, status 1, with `--verbose` (main) or
  MERLIN_JAX_VERBOSE=1 for the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sys

from merlin_jax import errors

BAD_INPUT = 2
NON_FINITE = 3
STORAGE = errors.STORAGE_EXIT_CODE       # 74
PREEMPTED = errors.PREEMPTED_EXIT_CODE   # 75
INTERRUPTED = 130
BUG = 1
EXIT_CODES = {   # the documented exit statuses (README, main's docstring)
    0: "done", BUG: "a bug in merlin_jax (one line; --verbose for the traceback)",
    BAD_INPUT: "bad input (config, flags, data, inputs, a damaged or missing file): nothing "
               "saved was changed",
    NON_FINITE: "a loss or gradient became NaN/inf: stopped, the last good checkpoint kept",
    STORAGE: "storage unreachable, full or read-only: the last good checkpoint kept; fix the "
             "storage and rerun the same command to resume",
    PREEMPTED: "preempted (SIGTERM / Ctrl-C once): rerun the same command to resume",
    INTERRUPTED: "Ctrl-C twice: stopped at once; rerun to resume from the last checkpoint",
}

_FULL = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file size limit was reached",
         errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only"}
# Text of the network/storage failures of the layers below (gcsfs/aiohttp, tensorstore,
# requests), matched along an exception's chain when their types are not importable here.
_NETWORK_TEXT = ("Cannot connect to host", "Connection refused", "UNAVAILABLE",
                 "Max retries exceeded", "Connection reset", "ServerDisconnected",
                 "Failed to establish a new connection", "DEADLINE_EXCEEDED",
                 "Temporary failure in name resolution", "timed out",
                 "Could not connect to server", "curl_code=")   # tensorstore (curl)
_DISK_TEXT = ("No space left on device", "File too large", "Disk quota exceeded",
              "Read-only file system", "RESOURCE_EXHAUSTED")


def one_line(text) -> str:
  """Newlines folded, long messages cut: what the contract prints."""
  line = " ".join(str(text).split())
  return line if len(line) <= 600 else line[:597] + "..."


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def storage_fault(e: BaseException, where: str = "") -> errors.StorageError | None:
  """The StorageError `e` stands for (a full disk, an unreachable endpoint...), or None."""
  for x in _chain(e):
    if isinstance(x, errors.StorageError):
      return x
  where_ = f" ({where})" if where else ""
  for x in _chain(e):
    code = getattr(x, "errno", None)
    text = str(x)
    full = _FULL.get(code) or next((t for t in _DISK_TEXT if t in text), None)
    if full:
      what = _FULL.get(code, full)
      return errors.StorageError(
          f"storage full{where_}: {what} ({type(x).__name__}: {one_line(text)[:160]}); free "
          "space or raise the limit, then rerun the same command: it resumes from the last "
          "good checkpoint")
  for x in _chain(e):
    text = str(x)
    name = type(x).__name__
    network = (isinstance(x, (ConnectionError, TimeoutError)) or name in (
        "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "HttpError",
        "ConnectTimeoutError", "ConnectionError") or any(t in text for t in _NETWORK_TEXT))
    if network:
      endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
      via = f" (endpoint {endpoint})" if endpoint else ""
      return errors.StorageError(
          f"storage unreachable{where_}{via}: {name}: {one_line(text)[:160]}; check the "
          "network, the bucket and your credentials (gcloud auth application-default login), "
          "then rerun the same command: it resumes from the last good checkpoint")
  return None


def api(fn):
  """Public library functions: storage failures below become one-line StorageErrors."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except errors.UserError:
      raise
    except Exception as e:  # noqa: BLE001 - classified; anything else is re-raised as is
      fault = storage_fault(e)
      if fault is None:
        raise
      raise fault from None
  return wrapped


def exit_code(e: BaseException) -> int:
  if isinstance(e, errors.Preempted):
    return PREEMPTED
  if isinstance(e, KeyboardInterrupt):
    return INTERRUPTED
  if isinstance(e, errors.NonFiniteLossError):
    return NON_FINITE
  if isinstance(e, errors.StorageError):
    return STORAGE
  if isinstance(e, errors.UserError):
    return BAD_INPUT
  return BUG


def message(e: BaseException) -> str:
  """The one line for `e` (without the program's prefix)."""
  if isinstance(e, KeyboardInterrupt):
    return ("interrupted (second Ctrl-C): stopped without saving; rerun the same command to "
            "resume from the last checkpoint")
  if isinstance(e, (errors.UserError, errors.NonFiniteLossError, errors.Preempted)):
    return one_line(e)
  return one_line(f"internal error {type(e).__name__}: {e} (a bug in merlin_jax; rerun with "
                  "--verbose or MERLIN_JAX_VERBOSE=1 for the traceback and report it)")


def verbose(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  return os.environ.get("MERLIN_JAX_VERBOSE") == "1" or any(
      a in ("--verbose", "-verbose", "--verbose=true", "--verbose=1") for a in argv)


def report(prog: str, e: BaseException) -> int:
  """Prints the one line for `e` and returns its exit status."""
  try:
    from absl import logging
    logging.flush()
  except Exception:  # noqa: BLE001 - printing the line matters more
    pass
  code = exit_code(e)
  kind = "" if code == PREEMPTED else "error: "
  print(f"{prog}: {kind}{message(e)}", file=sys.stderr, flush=True)
  return code


# Set by a program's __main__ (not by tests that call it in-process): after a storage fault
# the process ends with os._exit once its line is printed. A normal exit would tear down the
# interpreter under the storage clients' threads, whose event loops then print pages of
# "Event loop is closed" tracebacks after the line; nothing is left to save by then.
HARD_EXIT_ON_STORAGE_FAULT = False


def _unreachable(where: str, e: BaseException) -> errors.StorageError | None:
  """An unclassified failure of a program working on remote storage that no longer answers
  is a storage fault: orbax/gcsfs can surface a lost endpoint as another error (seen:
  NotADirectoryError for a checkpoint directory while the emulator was down)."""
  if not where or "://" not in where:
    return None
  from merlin_jax.runtime import fs
  try:
    fs.check_reachable(where)
  except errors.StorageError as s:
    return errors.StorageError(f"{s} (it failed as {type(e).__name__}: {one_line(e)[:120]})")
  except Exception:  # noqa: BLE001 - the probe itself is best effort
    return None
  return None


class _NoBackgroundTracebacks(logging.Filter):
  """Drops the traceback (not the message) of a log record from a thread other than the
  main one: orbax's and the storage clients' worker threads log a failed write with its
  traceback (e.g. a full disk: orbax future.py, "Event loop is closed"), printed before the
  main thread's one line; without --verbose a failure is that one line."""

  def filter(self, record):
    if record.threadName != "MainThread" and (record.exc_info or record.exc_text):
      record.exc_info, record.exc_text = None, None
    return True


def _quiet_background_tracebacks() -> None:
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _NoBackgroundTracebacks) for f in handler.filters):
      handler.addFilter(_NoBackgroundTracebacks())


def is_closed_loop_callback(unraisable) -> bool:
  """A tensorstore write that completed after orbax's event loop had closed (a save that
  failed, e.g. on a full disk or a lost bucket: orbax gives up and closes its loop while
  other writes are still in flight): tensorstore's done-callback calls the loop's
  `call_soon_threadsafe`, which raises "Event loop is closed", and tensorstore hands that to
  sys.unraisablehook, whose default prints a bare traceback. Nothing awaits that write
  any more; the save's own failure is what the run reports."""
  e = unraisable.exc_value
  if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
    return False
  tb = unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed" and (
      os.path.join("asyncio", "base_events.py") in tb.tb_frame.f_code.co_filename)


def _quiet_closed_loop_callbacks() -> None:
  previous = sys.unraisablehook
  if getattr(previous, "_merlin_jax", False):
    return

  def hook(unraisable):
    if is_closed_loop_callback(unraisable):
      logging.getLogger(__name__).debug("a storage write completed after its event loop "
                                        "closed (its save had already failed)")
      return
    previous(unraisable)
  hook._merlin_jax = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def cli(prog: str, where: str = ""):
  """The body of a command line: any exception -> one line and its exit status (module
  docstring). `where`: the storage the program works on, named in a storage fault."""
  if not verbose():
    _quiet_background_tracebacks()
    _quiet_closed_loop_callbacks()
  try:
    yield
  except SystemExit:
    raise
  except BaseException as e:  # noqa: BLE001 - the boundary
    if not isinstance(e, (errors.UserError, errors.Preempted, errors.NonFiniteLossError,
                          KeyboardInterrupt)):
      e = storage_fault(e, where) or _unreachable(where, e) or e
    if verbose() and not isinstance(e, (errors.Preempted, KeyboardInterrupt)):
      raise
    code = report(prog, e)
    if code == STORAGE and HARD_EXIT_ON_STORAGE_FAULT:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(os.open(os.devnull, os.O_WRONLY), 2)   # the line stays the last one printed
      os._exit(code)
    sys.exit(code)


def flags_parser(prog: str):
  """absl's flag parsing for `app.run(main, flags_parser=...)`: a bad flag or config file is
  one line `PROG: error: ...`, status 2 (absl prints a usage hint too)."""
  def parse(argv):
    from absl import flags
    try:
      rest = flags.FLAGS(argv)
      for name in list(flags.FLAGS):   # a config file loads lazily: missing or failing here,
        flag = flags.FLAGS[name]       # not in the middle of main
        if type(flag).__name__ == "_ConfigFlag" and flag.value is not None:
          flag.value.keys()
      return rest
    except Exception as e:  # noqa: BLE001 - flags.Error, a failing config file, ...
      if verbose(argv):
        raise
      sys.exit(report(prog, errors.UserError(str(e))))
  return parse


def entry(prog: str, main):
  """`main` of an absl program inside the boundary: `app.run(entry(PROG, main), ...)`."""
  @functools.wraps(main)
  def wrapped(argv):
    with cli(prog):
      return main(argv)
  return wrapped
