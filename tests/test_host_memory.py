"""merlin_jax/runtime/host_memory.py: the command line restarts itself once with malloc on
transparent huge pages (glibc.malloc.hugetlb=1), where that has an effect.

* when it restarts and when not (the user's tunable, the opt-out, old glibc, THP modes);
* the effect itself: a large buffer touched costs a fraction of the page faults;
* a SIGTERM that arrives around the restart is not lost (blocked across execv, delivered
  to the new process's handler);
* the real command line says in its log that it runs so.
"""

import os
import subprocess
import sys

import pytest

from merlin_jax.runtime import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("environ, glibc, mode, restarts", [
    ({}, (2, 36), "madvise", True),
    ({}, (2, 35), "madvise", True),
    ({}, (2, 34), "madvise", False),            # no such tunable before glibc 2.35
    ({}, None, "madvise", False),               # not glibc (musl, ...)
    ({}, (2, 36), "always", False),             # the pages are huge already
    ({}, (2, 36), "never", False),              # none to have
    ({}, (2, 36), None, False),                 # no THP in this kernel
    ({"MERLIN_JAX_HUGEPAGES": "0"}, (2, 36), "madvise", False),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", False),  # the user's
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise", True),
    ({"MERLIN_JAX_REEXEC": "1"}, (2, 36), "madvise", False),     # once only
])
def test_when_the_command_line_restarts(environ, glibc, mode, restarts):
  if not sys.platform.startswith("linux"):
    pytest.skip("Linux only")
  reason = host_memory.reexec_reason(environ, glibc=glibc, mode=mode)
  assert (reason is not None) == restarts, reason


def test_the_tunable_joins_what_the_user_set():
  env = host_memory.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert env["A"] == "b" and env["MERLIN_JAX_REEXEC"] == "1"
  assert host_memory.tuned_environ({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_thp_mode_reads_the_kernel_file(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert host_memory.thp_mode(str(f)) == "madvise"
  f.write_text("[always] madvise never\n")
  assert host_memory.thp_mode(str(f)) == "always"
  assert host_memory.thp_mode(str(tmp_path / "missing")) is None


def _plain_environ(**extra):
  """This environment without any restart setting of ours or the user's."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "MERLIN_JAX_REEXEC", "MERLIN_JAX_HUGEPAGES")}
  return dict(env, **extra)


def _needs_restart():
  if host_memory.reexec_reason({}) is None:
    pytest.skip(f"no restart on this machine (glibc {host_memory._glibc_version()}, THP "
                f"{host_memory.thp_mode()}): nothing to measure")


_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
best = None
for _ in range(3):   # a fresh mmap each time (glibc's threshold stays below 64 MB)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  libc.free(ctypes.c_void_p(p))
  best = faults if best is None else min(best, faults)
print(best)
"""


def test_a_large_buffer_costs_a_fraction_of_the_page_faults():
  """What the restart is for: 64 MB malloc'ed and written, as XLA:CPU does with a step's
  temporaries at every call. On 4 KB pages that is 16,384 faults; on 2 MB pages a few
  dozen (fewer than a quarter asserted: the kernel may fall back to small pages for part)."""
  _needs_restart()
  env = _plain_environ()
  plain = int(subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                             text=True, check=True).stdout)
  huge = int(subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                            check=True, env=host_memory.tuned_environ(env)).stdout)
  print(f"TIMING|hugepages|faults_64mb_plain={plain}|faults_64mb_hugetlb={huge}")
  assert plain >= 16000, plain
  assert huge < plain / 4, (huge, plain)


_RESTART = """
import os, signal, sys
from merlin_jax.runtime import host_memory
if not os.environ.get("MERLIN_JAX_REEXEC"):
  print("before", os.getpid(), flush=True)
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # as the restart does, then
  os.kill(os.getpid(), signal.SIGTERM)                          # the stop arrives
  host_memory.reexec_with_hugepages()
  print("not restarted", flush=True)
  sys.exit(1)
print("after", os.getpid(), os.environ["GLIBC_TUNABLES"], flush=True)
from merlin_jax.runtime import preemption
preemption.install_early()
assert not preemption.is_requested()
host_memory.release_signals()
print("stop requested", preemption.is_requested(), flush=True)
"""


def test_a_stop_during_the_restart_reaches_the_new_process():
  _needs_restart()
  out = subprocess.run([sys.executable, "-c", _RESTART], env=_plain_environ(PYTHONPATH=ROOT),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.split("\n")
  before, after = lines[0].split(), lines[1].split()
  assert before[1] == after[1]                         # the same process: execv keeps the pid
  assert after[2] == "glibc.malloc.hugetlb=1"
  assert lines[2] == "stop requested True"


def test_the_command_line_runs_on_huge_pages_and_says_so(tmp_path):
  """The real `python -m merlin_jax.main` and the console command `merlin-train` (the same
  program, merlin_jax.main:cli), up to a bad-input exit after their first log lines; with
  MERLIN_JAX_HUGEPAGES=0 no restart."""
  _needs_restart()
  base = _plain_environ(JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
                        TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
                        XLA_FLAGS="--xla_force_host_platform_device_count=2")
  args = [f"--config={os.path.join(ROOT, 'configs', 'synthetic.py')}",
          "--config.batch_size=15", f"--workdir={tmp_path / 'run'}"]
  module = [sys.executable, "-m", "merlin_jax.main"]
  console = os.path.join(os.path.dirname(sys.executable), "merlin-train")
  runs = [(module, "1"), (module, "0")]
  if os.path.exists(console):   # installed with pip install -e . (the README's way)
    runs.append(([console], "1"))
  for command, opt_out in runs:
    out = subprocess.run(command + args, env=dict(base, MERLIN_JAX_HUGEPAGES=opt_out),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "not divisible by the 2 devices" in out.stderr, (
        command, out.stderr[-2000:])
    said = "malloc on transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in out.stderr
    assert said == (opt_out == "1"), (command, out.stderr[-2000:])
