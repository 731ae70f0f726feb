"""Multi-process (multi-host) start-up: when and how to call `jax.distributed.initialize`.

Every process of a multi-host run executes the same program; after `initialize` JAX sees
the devices of all processes (`jax.devices()`), each process feeds the rows of its own
devices and orbax writes checkpoints from all of them. Call `initialize` before anything
touches a JAX backend (main.py does it right after flag parsing).

Modes (`--multihost` in main.py):
  'auto'  explicit settings (flags, or the env JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
          JAX_PROCESS_ID) -> initialize with them; else a detected cluster with more than
          one process (SLURM with several tasks, Open MPI, a Cloud TPU VM) -> initialize and
          let JAX detect the rest; else a single process (nothing to do).
  'on'    always initialize (missing settings auto-detected by JAX).
  'off'   never (a single process).
On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from merlin_jax.errors import UserError

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
  mode: str = "auto"
  coordinator_address: str | None = None    # host:port of process 0
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  timeout_s: int = 300                       # waiting for all processes to join

  @classmethod
  def from_env(cls, mode="auto", coordinator_address=None, num_processes=None, process_id=None,
               local_device_ids=None, timeout_s=300, environ=None) -> "Settings":
    """Flags win over the JAX_* environment variables (empty/None flag = not given)."""
    env = os.environ if environ is None else environ

    def int_or_none(v):
      return None if v in (None, "", -1) else int(v)
    ids = local_device_ids or env.get("JAX_LOCAL_DEVICE_IDS") or None
    if isinstance(ids, str):
      ids = tuple(int(i) for i in ids.split(","))
    return cls(mode=mode,
               coordinator_address=coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None,
               num_processes=int_or_none(num_processes if num_processes not in (None, -1)
                                         else env.get("JAX_NUM_PROCESSES")),
               process_id=int_or_none(process_id if process_id not in (None, -1)
                                      else env.get("JAX_PROCESS_ID")),
               local_device_ids=tuple(ids) if ids else None, timeout_s=int(timeout_s))

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None


def detected_cluster(environ=None) -> str | None:
  """The name of a multi-process launcher/cluster found in the environment, else None."""
  env = os.environ if environ is None else environ
  slurm_tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
  if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and slurm_tasks and int(slurm_tasks) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "openmpi"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "tpu"
  if env.get("MERLIN_SKIP_TPU_DETECTION") is None and _on_cloud_tpu_vm():
    return "tpu"
  return None


def _on_cloud_tpu_vm() -> bool:
  try:  # private, but it is exactly JAX's own test (libtpu + TPU devices on this VM)
    from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
    return bool(running_in_cloud_tpu_vm)
  except Exception:  # noqa: BLE001
    return False


def plan(settings: Settings, environ=None) -> dict | None:
  """The keyword arguments for jax.distributed.initialize, or None for a single process."""
  if settings.mode not in MODES:
    raise UserError(f"--multihost={settings.mode!r}: use one of {', '.join(MODES)}")
  if settings.mode == "off":
    return None
  if settings.explicit:
    missing = [k for k in ("num_processes", "process_id") if getattr(settings, k) is None]
    if missing:
      raise UserError(f"--coordinator_address is set but {' and '.join('--' + m for m in missing)}"
                      " not; give all three (or the JAX_* environment variables)")
    if not 0 <= settings.process_id < settings.num_processes:
      raise UserError(f"--process_id={settings.process_id} must be in [0, "
                      f"{settings.num_processes})")
  elif settings.mode == "auto" and detected_cluster(environ) is None:
    return None
  kwargs = {"coordinator_address": settings.coordinator_address,
            "num_processes": settings.num_processes, "process_id": settings.process_id,
            "initialization_timeout": settings.timeout_s}
  local = settings.local_device_ids
  if local is None and not settings.explicit and detected_cluster(environ) == "slurm":
    local = slurm_local_devices(environ)
  if local is not None:
    kwargs["local_device_ids"] = list(local)
  return kwargs


def slurm_local_devices(environ=None) -> tuple[int, ...] | None:
  """The GPUs a SLURM task drives, from what it sees; None: JAX's default (the task's
  SLURM_LOCALID, right when every task sees all GPUs of its node).

  JAX's default names a device that does not exist where SLURM binds GPUs to tasks
  (--gpus-per-task, --gpu-bind): the task sees one device, number 0. A task alone on its
  node (--ntasks-per-node=1) drives every GPU it sees.
  """
  env = os.environ if environ is None else environ
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if not visible:
    return None
  tasks_per_node = (env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
                    or "").split("(")[0]   # SLURM_TASKS_PER_NODE reads like '8(x2)'
  if tasks_per_node == "1":
    return tuple(range(len(visible)))
  if len(visible) == 1:
    return (0,)
  return None


def initialize(settings: Settings | None = None) -> bool:
  """Joins the multi-process run described by `settings` (see the module docstring).
  Returns True when JAX now runs multi-process (or was already initialised)."""
  import jax
  settings = settings or Settings.from_env()
  kwargs = plan(settings)
  if kwargs is None:
    return False
  if _already_initialized():
    return True
  # CPU collectives across processes (no effect on GPU/TPU computations).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info("jax.distributed.initialize(%s)",
               ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None))
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # noqa: BLE001 - one clear line: what to check
    raise UserError(
        f"could not join the multi-process run ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
        "check that every process got the same --coordinator_address/--num_processes, a distinct "
        "--process_id, and that process 0 is reachable on that port") from None
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _already_initialized() -> bool:
  try:
    from jax._src import distributed as _d
    return _d.global_state.client is not None
  except Exception:  # noqa: BLE001
    return False
