"""Host memory for the CPU step: large allocations on transparent huge pages.

XLA:CPU allocates a step's temporaries afresh at every call (tens of MB for the reference
step of bench/step.py), and glibc's malloc serves such sizes with a new mmap each time: every
4 KB page of it is then faulted in and zeroed by the kernel, at every step. Measured on the
2-core reference machine: ~17,000 minor page faults per joint step, ~20 ms of its ~95 ms
(bench/README.md, issue 32). With glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35)
malloc asks for transparent huge pages on those regions (madvise): 2 MB pages, ~400 faults
per step.

A tunable is read when the process starts, so the command line (merlin_jax/main.py) and
bench/step.py re-execute themselves once with it set: the same process (execv keeps the
pid, so Slurm, signals and launchers see no change), the same arguments. It is done only
where it has an effect: Linux, glibc >= 2.35, the kernel's THP mode `madvise` (with `always`
the pages are huge already; with `never` there are none), GLIBC_TUNABLES not already
choosing `glibc.malloc.hugetlb`. MERLIN_JAX_HUGEPAGES=0 turns it off.

A stop that arrives around the re-exec is not lost: SIGTERM / SIGINT are blocked before
execv (the mask and a pending signal survive it) and released by `release_signals()` once
the new process has its handlers (preemption.install_early).
"""

from __future__ import annotations

import os
import signal
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
_MARK = "MERLIN_JAX_REEXEC"           # set in the re-executed process: "1"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (ValueError, OSError, AttributeError):
    return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


_READ = object()


def reexec_reason(environ=None, glibc=_READ, mode=_READ) -> str | None:
  """Why the process should restart with the tunable, or None when it should not.
  `glibc` / `mode`: as read from this machine unless given (tests)."""
  environ = os.environ if environ is None else environ
  if environ.get("MERLIN_JAX_HUGEPAGES", "1") == "0" or environ.get(_MARK):
    return None
  if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return None   # the user chose
  if not sys.platform.startswith("linux"):
    return None
  glibc = _glibc_version() if glibc is _READ else glibc
  if glibc is None or glibc < (2, 35):
    return None
  mode = thp_mode() if mode is _READ else mode
  if mode != "madvise":
    return None
  return f"glibc {glibc[0]}.{glibc[1]}, transparent huge pages on madvise"


def tuned_environ(environ=None) -> dict:
  """`environ` with the tunable added to GLIBC_TUNABLES (kept: what was there) and the mark."""
  env = dict(os.environ if environ is None else environ)
  old = env.get("GLIBC_TUNABLES", "")
  env["GLIBC_TUNABLES"] = f"{old}:{TUNABLE}" if old else TUNABLE
  env[_MARK] = "1"
  return env


def reexec_with_hugepages(argv=None) -> None:
  """Restart this process (execv: same pid) with the tunable, where it has an effect;
  otherwise return. `argv`: the command line to run again (default: the one Python was
  started with, sys.orig_argv)."""
  if reexec_reason() is None:
    return
  argv = list(sys.orig_argv if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
  try:
    os.execve(sys.executable, argv, tuned_environ())
  except OSError:   # could not restart: run on as before
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def release_signals() -> None:
  """In the re-executed process, once its signal handlers are installed: deliver what
  arrived around the restart."""
  if os.environ.get(_MARK):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def active() -> bool:
  """True when malloc runs with the tunable (this process started with it)."""
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
