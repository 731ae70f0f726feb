"""A dead process ends a multi-process run promptly (merlin_jax/runtime/lifeline.py): two CLI
processes (jax.distributed on CPU, gloo); process 1 is killed with SIGKILL right after it
started the collective save of checkpoint 20. Process 0 must stop within seconds (not JAX's
~100 s heartbeat) with one line and status 75, the last committed checkpoint must restore,
and the rerun must end bitwise like the uninterrupted 2-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from merlin_jax.runtime import checkpointing
from tests.helpers import (
    CONFIG, TWO_PROCESS_FLAGS, assert_same_result, local_sh, subprocess_env)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIE_AT = 20

# The CLI, with orbax's save patched: process 1 SIGKILLs itself just after it has started
# the collective save of checkpoint DIE_AT (process 0 is then inside the same save).
_HARNESS = textwrap.dedent(f"""
    import os, signal, sys
    import orbax.checkpoint as ocp
    save = ocp.CheckpointManager.save
    def save_then_die(self, step, *args, **kwargs):
      out = save(self, step, *args, **kwargs)
      import jax
      if (step == {DIE_AT} and jax.process_index() == 1
          and os.path.basename(str(self.directory)) == "checkpoints"):
        os.kill(os.getpid(), signal.SIGKILL)
      return out
    ocp.CheckpointManager.save = save_then_die
    from merlin_jax import main
    main.run(sys.argv)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_kill9_of_one_process_during_a_save_stops_the_other_with_75_and_the_rerun_resumes(
    tmp_path, two_process_reference):
  reference, cache = two_process_reference
  env = dict(subprocess_env(cache), XLA_FLAGS="--xla_force_host_platform_device_count=1")
  workdir = tmp_path / "run"
  coordinator = f"127.0.0.1:{_free_port()}"
  procs, logs = [], []
  for i in range(2):
    logs.append(open(tmp_path / f"process_{i}.log", "w+"))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", _HARNESS, f"--config={CONFIG}", f"--workdir={workdir}",
         "--multihost=on", f"--coordinator_address={coordinator}", "--num_processes=2",
         f"--process_id={i}", "--distributed_timeout=300", *TWO_PROCESS_FLAGS],
        env=env, cwd=ROOT, stdout=logs[i], stderr=subprocess.STDOUT))
  try:
    procs[1].wait(timeout=400)
    died = time.time()
    assert procs[1].returncode == -9, open(logs[1].name).read()[-4000:]
    procs[0].wait(timeout=60)
    stopped_after = time.time() - died
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  out = open(logs[0].name).read()
  assert procs[0].returncode == 75, out[-4000:]
  assert stopped_after < 15, stopped_after
  last = out.strip().splitlines()[-1]
  assert last.startswith("merlin_jax: process 1 of this multi-process run stopped without "
                         "ending its run"), out[-3000:]
  assert "Traceback" not in out
  # The last committed checkpoint restores (20 was being saved when process 1 died).
  steps = checkpointing.make_manager(str(workdir / "checkpoints"), 5).all_steps()
  assert steps and max(steps) in (10, DIE_AT), steps
  # The rerun (the plain launcher, same flags) resumes from it and ends bitwise.
  rerun = local_sh(workdir, dict(env, XLA_FLAGS=""))
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert f"Resumed from {workdir / 'checkpoints'} at step {max(steps)}" in rerun.stderr
  assert_same_result(workdir, reference)
  print(f"TIMING|lifeline|process 0 stopped {stopped_after:.1f} s after process 1 was killed; "
        f"resumed at step {max(steps)}")


# The lifeline alone (no JAX, seconds): JAX's key-value store stood in for by a file.
_PEER = textwrap.dedent("""
    import os, sys, time
    from merlin_jax.runtime import lifeline
    kv = sys.argv[3]
    class Client:  # JAX's DistributedRuntimeClient, as far as the lifeline uses it
      def key_value_set(self, key, value):
        open(kv + ".tmp", "w").write(value); os.replace(kv + ".tmp", kv)
      def blocking_key_value_get(self, key, timeout_ms):
        while not os.path.exists(kv): time.sleep(0.01)
        return open(kv).read()
    lifeline.arm(Client(), int(sys.argv[1]), 2, "127.0.0.1")
    print("armed", flush=True)
    if sys.argv[2] == "end_in_order":
      lifeline.disarm(); sys.exit(0)
    time.sleep(60)
    print("still running", flush=True)
""")


def _peers(tmp_path, role1):
  kv = str(tmp_path / "kv")
  env = dict(os.environ, PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, "-c", _PEER, str(i), role, kv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i, role in ((0, "wait"), (1, role1))]
  for p in procs:
    assert p.stdout.readline().strip() == "armed"
  return procs


def _end(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()


def test_lifeline_a_killed_peer_stops_the_other_at_once_an_orderly_end_does_not(tmp_path):
  for victim in (1, 0):   # a worker, then the coordinator's process
    (tmp_path / str(victim)).mkdir()
    procs = _peers(tmp_path / str(victim), "wait")
    try:
      procs[victim].kill()
      t = time.time()
      other = procs[1 - victim]
      other.wait(timeout=10)
      assert other.returncode == 75 and time.time() - t < 5
      err = other.stderr.read().strip().splitlines()
      assert len(err) == 1 and err[0].startswith(f"merlin_jax: process {victim} of this")
    finally:
      _end(procs)
  # Process 1 ends in order (goodbye, exit 0): process 0 is not stopped.
  (tmp_path / "ok").mkdir()
  procs = _peers(tmp_path / "ok", "end_in_order")
  try:
    assert procs[1].wait(timeout=10) == 0
    time.sleep(1)
    assert procs[0].poll() is None
  finally:
    _end(procs)
