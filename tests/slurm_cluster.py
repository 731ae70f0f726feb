"""A real one-node Slurm cluster in a temporary directory (Debian's slurm-wlm + munge): its
own munged (own key and socket), slurmctld and slurmd on free ports, state and logs under
`root`. Needs root (slurmd runs jobs as their user) and the binaries; `missing()` says what
is absent. `stop()` ends exactly the daemons it started (by their pid files / pids).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")


def missing() -> str | None:
  """Why a real cluster cannot start here, or None."""
  absent = [b for b in BINARIES if shutil.which(b) is None
            and not os.path.exists(os.path.join("/usr/sbin", b))]
  if absent:
    return (f"{', '.join(absent)} not installed (apt-get install -y slurm-wlm munge; "
            ".ci/run does it)")
  if os.geteuid() != 0:
    return "slurmd must run as root to start jobs (CI runs as root)"
  return None


def _which(name):
  return shutil.which(name) or os.path.join("/usr/sbin", name)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Cluster:
  def __init__(self, root: str, cpus: int = 2):
    self.root = str(root)
    self.host = socket.gethostname().split(".")[0]
    self.conf = os.path.join(self.root, "slurm.conf")
    self.munge_socket = os.path.join(self.root, "munge.socket")
    self.cpus = cpus
    self.env = dict(os.environ, SLURM_CONF=self.conf)
    self._munged_pid = None
    self.pid_files = {d: os.path.join(self.root, f"{d}.pid") for d in ("slurmctld", "slurmd")}

  def _write_conf(self):
    r = self.root
    ctld, slurmd = _free_port(), _free_port()
    os.makedirs(os.path.join(r, "state"), exist_ok=True)
    os.makedirs(os.path.join(r, "spool"), exist_ok=True)
    with open(self.conf, "w") as f:
      f.write(f"""ClusterName=merlintest
SlurmctldHost={self.host}
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pid_files['slurmctld']}
SlurmdPidFile={self.pid_files['slurmd']}
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=30
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.host} CPUs={self.cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

  def start(self, timeout: float = 60.0) -> "Cluster":
    os.makedirs(self.root, exist_ok=True)
    key = os.path.join(self.root, "munge.key")
    with open(key, "wb") as f:
      f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_pid = os.path.join(self.root, "munged.pid")
    subprocess.run([_which("munged"), "--force", f"--key-file={key}",
                    f"--socket={self.munge_socket}", f"--pid-file={munge_pid}",
                    f"--log-file={self.root}/munged.log", f"--seed-file={self.root}/munged.seed"],
                   check=True, capture_output=True, timeout=30)
    self._munged_pid = _read_pid(munge_pid)
    self._write_conf()
    for daemon in ("slurmctld", "slurmd"):
      subprocess.run([_which(daemon)], env=self.env, check=True, capture_output=True,
                     timeout=30)
    deadline = time.time() + timeout
    while time.time() < deadline:   # the node registers and becomes idle
      out = self.run("sinfo", "-h", "-o", "%T", check=False)
      if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
        return self
      time.sleep(0.5)
    raise RuntimeError(f"Slurm did not come up: {self.log_tail()}")

  def run(self, *cmd, check=True, **kwargs):
    return subprocess.run(list(cmd), env=kwargs.pop("env", self.env), capture_output=True,
                          text=True, check=check, timeout=60, **kwargs)

  def job(self, job_id: str) -> dict:
    """`scontrol show job` as a dict (JobState, RunTime, Restarts, ExitCode, ...)."""
    out = self.run("scontrol", "-o", "show", "job", job_id).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

  def log_tail(self, n=3000) -> str:
    text = ""
    for name in ("slurmctld.log", "slurmd.log"):
      path = os.path.join(self.root, name)
      if os.path.exists(path):
        text += f"--- {name}\n" + open(path).read()[-n:]
    return text

  def stop(self):
    """Ends this cluster's jobs (a failed test may leave one running), then the daemons this
    object started, and nothing else."""
    try:
      jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
      if jobs:
        self.run("scancel", "--full", *jobs, check=False)
        deadline = time.time() + 30
        while (self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip()
               and time.time() < deadline):
          time.sleep(0.2)
    except Exception:  # noqa: BLE001 - the daemons must be stopped whatever happens
      pass
    pids = [_read_pid(self.pid_files[d]) for d in ("slurmd", "slurmctld")]
    pids.append(self._munged_pid)
    for pid in pids:
      if pid:
        _kill(pid, signal.SIGTERM)
    deadline = time.time() + 15
    for pid in pids:
      while pid and _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
      if pid and _alive(pid):
        _kill(pid, signal.SIGKILL)


def _read_pid(path):
  try:
    with open(path) as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return None


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:   # a zombie (not reaped yet) has ended
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except OSError:
    return False


def _kill(pid, sig):
  try:
    os.kill(pid, sig)
  except ProcessLookupError:
    pass
