"""launch/*.sh in dry-run mode (the commands they would run), merlin_jax.runtime.distributed's
decisions, and one real 2-process run of launch/local.sh on the synthetic pair."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

import pytest

from merlin_jax.runtime import distributed
from merlin_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(script, *args, env_dry_run=False):
  env = dict(os.environ)
  env.pop("DRY_RUN", None)
  if env_dry_run:
    env["DRY_RUN"] = "1"
  else:
    args = ("--dry-run",) + args if script != "gpu.sh" else (args[0], "--dry-run") + args[1:]
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], env=env,
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
  return out


def _commands(out):
  assert out.returncode == 0, out.stderr
  return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def _flag(cmd, name):
  values = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, cmd)
  return values[0]


TPU_ARGS = ("--name=merlin-pod", "--zone=us-central2-b", "--accelerator-type=v4-32",
            "--project=my-proj", "--config=configs/food_cub.py",
            "--workdir=/mnt/my-bucket/merlin/food_cub",
            "--data-dir=gs://my-bucket/tensorflow_datasets", "--", "--config.seed=1")


@pytest.mark.parametrize("env_dry_run", [False, True])
def test_tpu_pod_commands(env_dry_run):
  cmds = _commands(_dry_run("tpu_pod.sh", *TPU_ARGS, env_dry_run=env_dry_run))
  gcloud = [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
  create = [c for c in gcloud if c[4] == "create"]
  assert len(create) == 1 and create[0][5] == "merlin-pod"
  assert _flag(create[0], "accelerator-type") == "v4-32"
  assert _flag(create[0], "zone") == "us-central2-b" and _flag(create[0], "project") == "my-proj"
  remote = [c for c in gcloud if c[4] in ("ssh", "scp")]
  assert remote and all("--worker=all" in c and _flag(c, "zone") == "us-central2-b"
                        for c in remote)
  ssh = [_flag(c, "command") for c in gcloud if c[4] == "ssh"]
  setup = [s for s in ssh if "requirements.txt" in s]
  assert len(setup) == 1 and "jax[tpu]==" in setup[0] and "venv" in setup[0]
  run = [shlex.split(s.split("&&")[-1]) for s in ssh if "merlin_jax.main" in s]
  assert len(run) == 1
  run = run[0]
  # Detached from the SSH session, in the restart loop, a log per worker in the workdir.
  start, end = run.index("~/venv/bin/python"), run.index("</dev/null")
  assert run[:start] == ["setsid", "nohup", "launch/tpu_worker.sh", "merlin-pod"]
  assert run[end + 2:end + 4] == ["2>&1", "&"]
  assert run[end + 1] == ">>/mnt/my-bucket/merlin/food_cub/logs/$(hostname).log"
  assert any("mkdir -p /mnt/my-bucket/merlin/food_cub/logs" in s for s in ssh)
  main = run[start:end]
  assert main[:3] == ["~/venv/bin/python", "-m", "merlin_jax.main"]
  assert _flag(main, "config") == "configs/food_cub.py"
  assert _flag(main, "workdir") == "/mnt/my-bucket/merlin/food_cub"
  assert _flag(main, "config.data.data_dir") == "gs://my-bucket/tensorflow_datasets"
  assert _flag(main, "multihost") == "on" and main[-1] == "--config.seed=1"
  # Order: create, copy, set up, run.
  kinds = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
  assert kinds.index("create") < kinds.index("scp") < len(kinds) - 1
  assert "merlin_jax.main" in _flag(cmds[-1], "command")
  assert _flag(create[0], "version") == "tpu-ubuntu2204-base"    # v4's TPU software


def test_tpu_pod_prints_how_to_follow_and_stop_the_detached_job():
  out = _dry_run("tpu_pod.sh", "--steps=run", *TPU_ARGS)
  lines = [l for l in out.stdout.splitlines() if not l.startswith("+ ")]
  follow = [l for l in lines if l.startswith("Follow")]
  stop = [l for l in lines if l.startswith("Stop")]
  assert len(follow) == 1 and "--worker=0" in follow[0] and "tail -F" in follow[0]
  assert "/mnt/my-bucket/merlin/food_cub/logs/" in follow[0]
  assert len(stop) == 1 and "--steps=stop" in stop[0] and "--name=merlin-pod" in stop[0]
  # The stop step: SIGTERM (a checkpoint, exit 75) to the job's process group on every
  # worker, found by its pid file (tested for real in test_tpu_worker_*).
  cmds = _commands(_dry_run("tpu_pod.sh", "--name=merlin-pod", "--zone=z", "--steps=stop"))
  assert len(cmds) == 1 and "--worker=all" in cmds[0]
  command = _flag(cmds[0], "command")
  assert command == ("test -f ~/merlin_jobs/merlin-pod.pid && "
                     "kill -TERM -- -$(cat ~/merlin_jobs/merlin-pod.pid) || true")
  assert "pkill" not in out.stdout


def test_tpu_pod_gs_workdir_logs_through_log_to_uri():
  """A gs:// workdir is passed as is (orbax and merlin_jax.runtime.fs write it); each worker's log
  is written locally and copied to WORKDIR/logs by launch/log_to_uri.sh."""
  args = [a if not a.startswith("--workdir=") else "--workdir=gs://my-bucket/merlin/run"
          for a in TPU_ARGS]
  out = _dry_run("tpu_pod.sh", "--steps=run", *args)
  ssh = [_flag(c, "command") for c in _commands(out)]
  run = shlex.split(ssh[0].split("&&")[-1])
  start = run.index("launch/log_to_uri.sh")
  assert run[:start] == ["setsid", "nohup", "launch/tpu_worker.sh", "merlin-pod"]
  assert run[start + 1] == "gs://my-bucket/merlin/run/logs"
  main = run[start + 2:run.index("</dev/null")]
  assert main[:3] == ["~/venv/bin/python", "-m", "merlin_jax.main"]
  assert _flag(main, "workdir") == "gs://my-bucket/merlin/run"
  assert not any("mkdir -p gs://" in s for s in ssh)
  follow = [l for l in out.stdout.splitlines() if l.startswith("Follow")]
  assert "--command=tail -F ~/merlin_logs/*.log" in follow[0]


def test_log_to_uri_copies_the_log_while_the_job_runs_and_keeps_its_status(tmp_path):
  """For real, with a stand-in `gcloud` on PATH that records its copies."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(
      '#!/usr/bin/env bash\n[[ "$1 $2" == "storage cp" ]] || exit 1\n'
      'cp "$4" "$GCLOUD_FAKE_DIR/$(basename "$5")"\necho "$5" >> "$GCLOUD_FAKE_DIR/calls"\n')
  (bin_dir / "gcloud").chmod(0o755)
  fake = tmp_path / "bucket"
  fake.mkdir()
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path),
             GCLOUD_FAKE_DIR=str(fake), MERLIN_LOG_SYNC_S="0.2")
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "log_to_uri.sh"),
                        "gs://b/run/logs", "bash", "-c", "echo one; sleep 1; echo two; exit 7"],
                       env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 7, out.stderr
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  calls = (fake / "calls").read_text().split()
  assert len(calls) >= 3 and set(calls) == {f"gs://b/run/logs/{host}.log"}  # while + at end
  assert (fake / f"{host}.log").read_text() == "one\ntwo\n"
  assert (tmp_path / "merlin_logs" / f"{host}.log").read_text() == "one\ntwo\n"
  # A local LOGDIR: the log goes straight there.
  local = tmp_path / "logs"
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "log_to_uri.sh"), str(local),
                        "bash", "-c", "echo hi"], env=env, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0 and (local / f"{host}.log").read_text() == "hi\n"


@pytest.mark.parametrize("accelerator,version", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"), ("v3-8", "tpu-ubuntu2204-base")])
def test_tpu_pod_software_version_follows_the_accelerator(accelerator, version):
  args = ("--name=n", "--zone=z", f"--accelerator-type={accelerator}", "--steps=create")
  cmds = _commands(_dry_run("tpu_pod.sh", *args))
  assert _flag(cmds[0], "version") == version
  cmds = _commands(_dry_run("tpu_pod.sh", *args, "--version=my-image"))
  assert _flag(cmds[0], "version") == "my-image"


def test_tpu_pod_unknown_accelerator_needs_a_version():
  out = _dry_run("tpu_pod.sh", "--name=n", "--zone=z", "--accelerator-type=v9-8",
                 "--steps=create")
  assert out.returncode == 2 and "--version=" in out.stderr and "v9-8" in out.stderr


def test_tpu_pod_steps_delete_and_bad_workdir():
  cmds = _commands(_dry_run("tpu_pod.sh", "--steps=run", "--delete", *TPU_ARGS[:-2]))
  # The job runs detached: --delete first waits until it has ended on every worker.
  assert [c[4] for c in cmds] == ["ssh", "ssh", "delete"]
  assert _flag(cmds[1], "command") == ("while test -f ~/merlin_jobs/merlin-pod.pid && kill -0 "
                                       "$(cat ~/merlin_jobs/merlin-pod.pid) 2>/dev/null; do "
                                       "sleep 60; done")
  bad = _dry_run("tpu_pod.sh", "--name=x", "--zone=z", "--config=c.py", "--workdir=s3://b/w")
  assert bad.returncode == 2 and "--workdir" in bad.stderr
  missing = _dry_run("tpu_pod.sh", "--zone=z", "--config=c.py", "--workdir=/w")
  assert missing.returncode == 2 and "--name" in missing.stderr


def test_gpu_slurm_commands():
  cmds = _commands(_dry_run("gpu.sh", "slurm", "--nodes=4", "--gpus-per-node=8",
                            "--partition=gpu", "--time=12:00:00", "--config=configs/food_cub.py",
                            "--workdir=/shared/merlin", "--data-dir=gs://b/tfds", "--",
                            "--config.batch_size=256"))
  assert len(cmds) == 1
  cmd = cmds[0]
  assert cmd[0] == "srun" and _flag(cmd, "nodes") == "4"
  assert _flag(cmd, "ntasks-per-node") == "8" and _flag(cmd, "gpus-per-node") == "8"
  assert _flag(cmd, "partition") == "gpu" and _flag(cmd, "time") == "12:00:00"
  i = cmd.index("merlin_jax.main")
  assert cmd[i - 1] == "-m" and cmd[i - 2].endswith("/bin/python")
  main = cmd[i:]
  assert _flag(main, "config") == "configs/food_cub.py" and _flag(main, "workdir") == "/shared/merlin"
  assert _flag(main, "config.data.data_dir") == "gs://b/tfds"
  # jax.distributed reads SLURM's variables: no explicit coordinator/process id.
  assert _flag(main, "multihost") == "on"
  assert not any(a.startswith(("--coordinator_address", "--process_id")) for a in main)
  assert main[-1] == "--config.batch_size=256"


@pytest.mark.parametrize("binding,tasks,gpus", [
    ("shared", "8", ("gpus-per-node", "8")), ("task", "8", ("gpus-per-task", "1")),
    ("node", "1", ("gpus-per-node", "8"))])
def test_gpu_slurm_gpu_bindings(binding, tasks, gpus):
  cmds = _commands(_dry_run("gpu.sh", "slurm", "--nodes=2", "--gpus-per-node=8",
                            f"--gpu-binding={binding}", "--config=c.py", "--workdir=/w"))
  cmd = cmds[0][:cmds[0].index("-m")]
  assert _flag(cmd, "ntasks-per-node") == tasks and _flag(cmd, gpus[0]) == gpus[1]
  other = {"gpus-per-node", "gpus-per-task"} - {gpus[0]}
  assert not any(a.startswith(f"--{o}=") for o in other for a in cmd)
  bad = _dry_run("gpu.sh", "slurm", "--gpu-binding=socket", "--config=c", "--workdir=w")
  assert bad.returncode == 2 and "--gpu-binding" in bad.stderr


def test_slurm_processes_drive_the_gpus_they_see():
  """JAX's SLURM default (device SLURM_LOCALID) fits tasks that see the whole node; with
  one GPU bound per task, the one visible device is 0; a task alone on its node drives all."""
  slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3"}
  plan = lambda env: distributed.plan(distributed.Settings(mode="on"), environ=env)
  shared = dict(slurm, SLURM_NTASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
  assert "local_device_ids" not in plan(shared)
  bound = dict(slurm, SLURM_NTASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="3")
  assert plan(bound)["local_device_ids"] == [0]
  node = dict(slurm, SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="1(x2)", SLURM_LOCALID="0",
              CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
  assert plan(node)["local_device_ids"] == list(range(8))
  # Explicit settings win.
  explicit = distributed.Settings(mode="on", local_device_ids=(5,))
  assert distributed.plan(explicit, environ=bound)["local_device_ids"] == [5]


def test_gpu_single_host_command():
  cmds = _commands(_dry_run("gpu.sh", "local", "--gpus=0,1,2,3", "--config=configs/food_cub.py",
                            "--workdir=/scratch/w"))
  assert len(cmds) == 1
  cmd = cmds[0]
  assert cmd[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3"]
  assert "srun" not in cmd and _flag(cmd, "multihost") == "off"
  assert _flag(cmd, "config") == "configs/food_cub.py" and _flag(cmd, "workdir") == "/scratch/w"
  assert _dry_run("gpu.sh", "cluster", "--config=c", "--workdir=w").returncode == 2


def test_local_multiprocess_commands():
  cmds = _commands(_dry_run("local.sh", "--processes=3", "--devices=2",
                            "--config=configs/synthetic.py", "--workdir=/tmp/mp", "--",
                            "--config.total_steps=4"))
  assert len(cmds) == 3
  coordinators = {_flag(c, "coordinator_address") for c in cmds}
  assert len(coordinators) == 1 and coordinators.pop().startswith("127.0.0.1:")
  assert [_flag(c, "process_id") for c in cmds] == ["0", "1", "2"]
  for c in cmds:
    assert c[0] == "timeout" and "JAX_PLATFORMS=cpu" in c
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in c
    assert _flag(c, "num_processes") == "3" and _flag(c, "multihost") == "on"
    assert _flag(c, "config") == "configs/synthetic.py" and _flag(c, "workdir") == "/tmp/mp"
    assert c[-1] == "--config.total_steps=4"


# --- merlin_jax.runtime.distributed: when to call jax.distributed.initialize, with what ----------


def test_distributed_plan_single_process_by_default():
  assert distributed.plan(distributed.Settings.from_env(environ={}), environ={}) is None
  assert distributed.plan(distributed.Settings(mode="off", coordinator_address="h:1",
                                               num_processes=2, process_id=0)) is None


def test_distributed_plan_explicit_from_flags_or_env():
  s = distributed.Settings.from_env("auto", "10.0.0.1:1234", 4, 3, timeout_s=60, environ={})
  assert distributed.plan(s, environ={}) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
      "initialization_timeout": 60}
  env = {"JAX_COORDINATOR_ADDRESS": "h:5", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  s = distributed.Settings.from_env(environ=env)
  assert distributed.plan(s, environ=env)["process_id"] == 1
  with pytest.raises(UserError, match="--num_processes"):
    distributed.plan(distributed.Settings(coordinator_address="h:5", process_id=0))
  with pytest.raises(UserError, match="process_id"):
    distributed.plan(distributed.Settings(coordinator_address="h:5", num_processes=2,
                                          process_id=2))


def test_distributed_plan_detects_clusters():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "16"}
  assert distributed.detected_cluster(slurm) == "slurm"
  assert distributed.detected_cluster(dict(slurm, SLURM_NTASKS="1")) is None
  assert distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "4"}) == "openmpi"
  assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == "tpu"
  # Detected: let JAX fill in everything.
  plan = distributed.plan(distributed.Settings(), environ=slurm)
  assert plan["coordinator_address"] is None and plan["num_processes"] is None
  assert distributed.plan(distributed.Settings(mode="on"), environ={}) is not None


# --- a real run: launch/local.sh, 2 processes, the synthetic pair, through main's flags ---


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "configs", "synthetic.py")),
                    reason="needs configs/synthetic.py")
def test_local_launch_runs_two_processes(tmp_path):
  workdir = tmp_path / "mp"
  env = dict(os.environ, MERLIN_JAX_TENSORBOARD="0", PYTHON=sys.executable)
  env.pop("DRY_RUN", None)
  out = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", "local.sh"), "--processes=2", "--devices=1",
       "--timeout=300", "--config=configs/synthetic.py", f"--workdir={workdir}", "--",
       "--config.total_steps=2", "--config.eval.every=2", "--config.checkpoint_every=2"],
      env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:] + _log(workdir / "process_1.log")
  from merlin_jax.runtime.metrics import read_jsonl
  records = read_jsonl(str(workdir / "metrics.jsonl"))
  assert records[-1]["final"] and records[-1]["step"] == 2
  assert os.listdir(workdir / "checkpoints")


def _log(path):
  return path.read_text()[-2000:] if path.exists() else ""


def test_gpu_sbatch_requeues_signals_early_and_logs_into_the_workdir():
  cmds = _commands(_dry_run("gpu.sh", "sbatch", "--nodes=2", "--gpus-per-node=8",
                            "--time=24:00:00", "--signal-s=600", "--config=configs/food_cub.py",
                            "--workdir=/shared/merlin", "--", "--config.seed=1"))
  assert len(cmds) == 1
  cmd = cmds[0]
  assert cmd[:3] == ["sbatch", "--parsable", "--requeue"]
  assert _flag(cmd, "signal") == "B:TERM@600" and _flag(cmd, "time") == "24:00:00"
  assert _flag(cmd, "output") == "/shared/merlin/logs/slurm-%j.log"
  assert _flag(cmd, "open-mode") == "append"           # one log across restarts
  assert not any(a.startswith("--cpus-per-task") for a in cmd)   # from the allocation
  i = cmd.index("-m")
  assert cmd[i - 2].endswith("launch/slurm_job.sh") and cmd[i + 1] == "merlin_jax.main"
  assert _flag(cmd[i:], "multihost") == "on" and cmd[-1] == "--config.seed=1"
  # gpu.sh slurm (foreground srun) no longer asks for a fixed number of CPUs either.
  srun = _commands(_dry_run("gpu.sh", "slurm", "--config=c", "--workdir=/w"))[0]
  assert not any(a.startswith("--cpus-per-task") for a in srun)


def test_tpu_pod_refuses_gcsfuse_pointing_to_the_gs_workdir():
  out = _dry_run("tpu_pod.sh", *TPU_ARGS[:-2], "--gcsfuse=my-bucket")
  assert out.returncode == 2 and out.stdout == ""
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "--workdir=gs://my-bucket/" in lines[0] and "rename" in lines[0]


def _worker_env(tmp_path, **extra):
  return dict(os.environ, HOME=str(tmp_path), MERLIN_RESTART_DELAY_S="0.1", **extra)


def _stop_command(job):
  """The command tpu_pod.sh's stop step runs on every worker."""
  cmds = _commands(_dry_run("tpu_pod.sh", "--name=pod", "--zone=z", f"--job={job}",
                            "--steps=stop"))
  return _flag(cmds[0], "command")


# A stand-in training command: SIGTERM -> "checkpoint" and exit 75, like merlin_jax.main.
_FAKE_RUN = ('trap \'echo saved; exit 75\' TERM; echo "start $*" >> "$HOME/$1.calls"; '
             'for i in $(seq 600); do sleep 0.1; done')


def test_tpu_worker_stop_targets_its_own_job_and_leaves_another_untouched(tmp_path):
  env = _worker_env(tmp_path)
  worker = os.path.join(ROOT, "launch", "tpu_worker.sh")
  jobs = {}
  for job in ("a", "b"):
    jobs[job] = subprocess.Popen(["setsid", worker, job, "bash", "-c", _FAKE_RUN, "x", job],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
  try:
    pidfile = tmp_path / "merlin_jobs" / "a.pid"
    deadline = time.time() + 30
    while not all((tmp_path / f"{j}.calls").exists() for j in jobs):
      assert time.time() < deadline
      time.sleep(0.05)
    assert int(pidfile.read_text()) == jobs["a"].pid
    # The same job twice on a worker is refused.
    again = subprocess.run([worker, "a", "true"], env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "already runs here" in again.stderr
    stop = subprocess.run(["bash", "-c", _stop_command("a")], env=env, timeout=30)
    assert stop.returncode == 0
    out, _ = jobs["a"].communicate(timeout=30)
    assert jobs["a"].returncode == 75 and "saved" in out and "stopped (status 75)" in out
    assert (tmp_path / "a.calls").read_text().count("start") == 1   # no restart after a stop
    assert not pidfile.exists() and (tmp_path / "merlin_jobs" / "a.status").read_text() == "75\n"
    assert jobs["b"].poll() is None            # the other job on the worker runs on
    assert (tmp_path / "merlin_jobs" / "b.pid").exists()
  finally:
    for p in jobs.values():
      if p.poll() is None:
        os.killpg(p.pid, 15)
        p.wait(timeout=30)
  assert jobs["b"].returncode == 75


def test_tpu_worker_restarts_a_preempted_or_killed_run_until_it_is_done(tmp_path):
  # 1st start: preempted (75); 2nd: killed (SIGKILL, 137); 3rd: done (0).
  script = ('n=$(cat "$HOME/n" 2>/dev/null || echo 0); echo $((n + 1)) > "$HOME/n"; '
            'echo "start $n $*"; case $n in 0) exit 75 ;; 1) kill -9 $$ ;; *) exit 0 ;; esac')
  out = subprocess.run([os.path.join(ROOT, "launch", "tpu_worker.sh"), "job", "bash", "-c",
                        script, "x", "--workdir=w"], env=_worker_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr
  starts = [l for l in out.stdout.splitlines() if l.startswith("start")]
  assert starts == ["start 0 --workdir=w", "start 1 --workdir=w", "start 2 --workdir=w"]
  assert "status 75" in out.stdout and "status 137" in out.stdout
  assert (tmp_path / "merlin_jobs" / "job.status").read_text() == "0\n"
  # A bad-input status (2) is not restarted.
  (tmp_path / "n").unlink()
  out = subprocess.run([os.path.join(ROOT, "launch", "tpu_worker.sh"), "job2", "bash", "-c",
                        "echo start; exit 2"], env=_worker_env(tmp_path), capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 2 and out.stdout.count("\nstart\n") == 1 and "restarting" not in out.stdout


_FAKE_GCLOUD = r'''#!/usr/bin/env bash
# Stand-in gcloud: records each call; `queued-resources describe` answers the next line of
# $FAKE/states (then ACTIVE); `tpu-vm ssh` runs --command here (one worker, HOME = the
# worker's home) except the package set-up; `tpu-vm scp` copies into HOME.
echo "gcloud $*" >> "$FAKE/calls"
case "$2 $3 $4" in
  "tpus queued-resources describe")
    n=$(( $(cat "$FAKE/n" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE/n"
    state=$(sed -n "${n}p" "$FAKE/states"); echo "${state:-ACTIVE}" ;;
  "tpus tpu-vm ssh")
    for a in "$@"; do [[ "$a" == --command=* ]] && cmd="${a#--command=}"; done
    [[ "$cmd" == *apt-get* ]] || (cd "$HOME" && bash -c "$cmd") ;;
  "tpus tpu-vm scp") cp "$5" "$HOME/${6#*:}" ;;
esac
exit 0
'''

# The worker's venv python, standing in for merlin_jax.main: the 1st start is preempted
# (status 75, as after SIGTERM or a dead peer), the 2nd resumes and finishes.
_FAKE_PYTHON = r'''#!/usr/bin/env bash
echo "$*" >> "$HOME/starts"
if [[ $(wc -l < "$HOME/starts") == 1 ]]; then echo "preempted at step 30"; exit 75; fi
echo "Resumed at step 30"; echo done > "$HOME/finished"
'''


def test_tpu_pod_spot_supervise_recreates_a_preempted_pod_and_the_job_resumes(tmp_path):
  """--spot --steps=supervise with a stand-in gcloud: the queued resource is found
  SUSPENDED (spot preemption), so it is deleted, created again (--spot), waited for, the
  code copied and the job started in the restart loop; its first start is preempted (75),
  the loop reruns the same command, and supervise ends when worker 0 reports status 0."""
  fake, home, bin_dir = tmp_path / "fake", tmp_path / "home", tmp_path / "bin"
  for d in (fake, home, bin_dir, home / "venv" / "bin"):
    d.mkdir(parents=True)
  # Still queued (kept: its place in the queue), then preempted, then granted again.
  (fake / "states").write_text("WAITING_FOR_RESOURCES\nSUSPENDED\nWAITING_FOR_RESOURCES\n"
                               "ACTIVE\n")
  for path, text in ((bin_dir / "gcloud", _FAKE_GCLOUD),
                     (home / "venv" / "bin" / "python", _FAKE_PYTHON)):
    path.write_text(text)
    path.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(home), FAKE=str(fake),
             MERLIN_SUPERVISE_S="0.2", MERLIN_RESTART_DELAY_S="0.1", TMPDIR=str(tmp_path))
  env.pop("DRY_RUN", None)
  workdir = tmp_path / "shared" / "run"
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--name=pod",
                        "--zone=z", "--accelerator-type=v5litepod-16", "--spot",
                        "--config=configs/digits.py", f"--workdir={workdir}",
                        "--steps=supervise", "--", "--config.seed=1"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "queued resource pod is SUSPENDED: creating it again" in out.stdout
  assert "supervise: job pod is done" in out.stdout
  calls = [shlex.split(c)[1:] for c in (fake / "calls").read_text().splitlines()]
  kinds = [" ".join(c[2:4]) for c in calls]
  i_delete = kinds.index("queued-resources delete")
  assert kinds[:i_delete] == ["queued-resources describe"] * 2
  i_create = kinds.index("queued-resources create")
  create = calls[i_create]
  assert "--spot" in create and _flag(create, "node-id") == "pod"
  assert _flag(create, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert _flag(create, "accelerator-type") == "v5litepod-16"
  # Created only after the old one is deleted; started only once it is ACTIVE.
  i_start = next(i for i, c in enumerate(calls) if "tpu_worker.sh" in " ".join(c))
  assert i_delete < i_create < kinds.index("tpu-vm scp") < i_start
  assert kinds[i_create + 1:i_create + 3] == ["queued-resources describe"] * 2
  # The job restarted by itself with the same command, and finished.
  starts = (home / "starts").read_text().splitlines()
  assert len(starts) == 2 and starts[0] == starts[1]
  assert f"--workdir={workdir}" in starts[0] and "--config.seed=1" in starts[0]
  assert (home / "finished").exists()
  assert (home / "merlin_jobs" / "pod.status").read_text() == "0\n"
  log = next((workdir / "logs").glob("*.log")).read_text()
  assert "preempted at step 30" in log and "restarting" in log and "Resumed at step 30" in log
  print("COMMANDS|" + "\nCOMMANDS|".join(" ".join(c) for c in calls))
