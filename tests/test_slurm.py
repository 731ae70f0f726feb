"""Preemptible capacity on a real Slurm (helpers.SlurmCluster: munged + slurmctld + slurmd from
Debian's slurm-wlm, started in a temp dir and stopped at the end).

`launch/slurm.sh` submits a 2-task CPU run (2 JAX processes joined by jax.distributed) of
the synthetic pair; the test preempts it mid-run with `scontrol requeue`, Slurm restarts
it (same command, same job), and the result is bitwise that of an uninterrupted 2-process
run (`launch/local.sh`). Skipped only where the binaries are absent (.ci/run installs them)
or not root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    CONFIG, TWO_PROCESS_FLAGS, TWO_PROCESS_RUN, SlurmCluster, assert_same_result,
    slurm_missing, subprocess_env)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.dirname(os.path.dirname(sys.executable))

pytestmark = pytest.mark.skipif(slurm_missing() is not None,
                                reason=f"real Slurm unavailable: {slurm_missing()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  c = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
  try:
    yield c.start()
  finally:
    c.stop()


def _wait_for(what, until, timeout, cluster=None, log=None):
  deadline = time.time() + timeout
  while not until():
    if time.time() > deadline:
      tail = open(log).read()[-4000:] if log and os.path.exists(log) else ""
      pytest.fail(f"timed out waiting for {what}\n{tail}\n{cluster.log_tail() if cluster else ''}")
    time.sleep(0.1)


def _release_requeued(cluster, job, log):
  """Slurm holds a requeued job back (Reason=BeginTime, ~2 min); start it now, once the
  node has finished cleaning up its previous start (a start before that is refused:
  'Job credential revoked')."""
  _wait_for("the requeue", lambda: cluster.job(job).get("Reason") == "BeginTime", 120,
            cluster, log)
  _wait_for("the node to be idle", lambda: cluster.run(
      "sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle", 60, cluster, log)
  time.sleep(1)
  cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def test_preempted_slurm_job_is_requeued_and_resumes_bitwise(tmp_path, cluster,
                                                             two_process_reference):
  # The uninterrupted 2-process run (launch/local.sh; it also filled the compilation cache).
  reference, cache = two_process_reference
  env = subprocess_env(cache)
  t0 = time.time()

  workdir = tmp_path / "run"
  out = subprocess.run([os.path.join(ROOT, "launch", "slurm.sh"), f"--config={CONFIG}",
                        f"--workdir={workdir}", "--gpus-per-node=0", "--ntasks-per-node=2",
                        "--signal-s=30", f"--venv={VENV}", "--", *TWO_PROCESS_FLAGS],
                       env=dict(env, **cluster.env), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  job = out.stdout.strip().splitlines()[-1]
  assert "sbatch --parsable --requeue --signal=B:TERM@30" in out.stdout
  log = str(workdir / "logs" / f"slurm-{job}.log")

  # Preempt as soon as checkpoint 10 is committed (the run is then mid-way).
  _wait_for("checkpoint 10", lambda: os.path.isdir(workdir / "checkpoints" / "10"), 300,
            cluster, log)
  t_preempt = time.time()
  cluster.run("scontrol", "requeue", job)
  _release_requeued(cluster, job, log)
  t_requeued = time.time()
  _wait_for("the job to end", lambda: cluster.job(job)["JobState"] in
            ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), 300, cluster, log)
  t_end = time.time()
  info = cluster.job(job)
  text = open(log).read()
  assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-4000:])
  assert info["Restarts"] == "1"
  stopped = int(text.split("merlin_jax: preempted at step ")[1].split(":")[0])
  assert 10 <= stopped < TWO_PROCESS_RUN["total_steps"], text[-4000:]
  assert "Exited with exit code 75" in text   # (Slurm itself requeues the job here)
  assert f"Resumed from {workdir / 'checkpoints'} at step {stopped}" in text
  assert_same_result(workdir, reference)
  print(f"TIMING|slurm|submit to checkpoint 10 {t_preempt - t0:.0f} s; requeue to pending "
        f"{t_requeued - t_preempt:.0f} s; restart to the end {t_end - t_requeued:.0f} s; "
        f"stopped at step {stopped}; total {t_end - t0:.0f} s")


# A stand-in for the venv's python (the batch script's handling, not training): the 1st
# start saves on SIGTERM and exits 75, like merlin_jax.main; the 2nd finishes.
_FAKE_PYTHON = """#!/usr/bin/env bash
echo "task $SLURM_PROCID start ${SLURM_RESTART_COUNT:-0}: $*"
[[ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]] && { echo "task $SLURM_PROCID done"; exit 0; }
trap 'echo "task $SLURM_PROCID saved"; exit 75' TERM
for i in $(seq 1200); do sleep 0.1; done
"""


def test_early_sigterm_to_the_batch_script_checkpoints_and_requeues(tmp_path, cluster):
  """--signal=B:TERM@S sends SIGTERM to the batch script only (before the time limit): it
  must reach the tasks (they save, exit 75) and the script must requeue the job itself.
  `scancel --batch --signal=TERM` sends exactly that signal now."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").write_text(_FAKE_PYTHON)
  (venv / "bin" / "python").chmod(0o755)
  workdir = tmp_path / "run"
  out = subprocess.run([os.path.join(ROOT, "launch", "slurm.sh"), f"--config={CONFIG}",
                        f"--workdir={workdir}", "--gpus-per-node=0", "--ntasks-per-node=2",
                        f"--venv={venv}"], env=cluster.env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  job = out.stdout.strip().splitlines()[-1]
  log = str(workdir / "logs" / f"slurm-{job}.log")
  _wait_for("both tasks", lambda: os.path.exists(log) and open(log).read().count(" start 0:") == 2,
            60, cluster, log)
  cluster.run("scancel", "--batch", "--signal=TERM", job)
  _release_requeued(cluster, job, log)
  _wait_for("the job to end", lambda: cluster.job(job)["JobState"] in
            ("COMPLETED", "FAILED", "CANCELLED"), 60, cluster, log)
  info, text = cluster.job(job), open(log).read()
  assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (
      {k: info.get(k) for k in ("JobState", "Restarts", "ExitCode", "Reason")}, text)
  assert "SIGTERM: asking the processes to checkpoint and stop" in text
  assert text.count("saved") == 2 and "requeued to resume" in text
  assert text.count(" start 1:") == 2 and text.count(" done") == 2
  # The same command on both starts (nothing to change to resume).
  starts = [l.split(": ", 1)[1] for l in text.splitlines() if l.startswith("task ")
            and " start " in l]
  assert len(starts) == 4 and len(set(starts)) == 1
