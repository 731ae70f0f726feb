"""Bad input at the command line: exit 2, ONE line `merlin_jax: error: ...` on stderr naming
the fix, no traceback (unless --verbose), and nothing already saved in the workdir changes.

The table runs `merlin_jax.main` in-process through absl's `app.run` (the same flag parsing,
`main` and error printing as `python -m merlin_jax.main`); a few cases also run as real
subprocesses, one of them on two CPU devices.
"""

import glob
import os
import shutil
import subprocess
import sys

import pytest
from tests.helpers import assert_one_line_error, run_cli, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic.py")


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "0")   # skips TensorFlow's import


# kind -> (flags, expected fragment of the one line, where): where = 'fresh' (a new workdir:
# nothing may be left in it), 'finished' (a copy of a finished run's workdir), or
# 'finished:<damage>' (that copy, damaged first, see _DAMAGE). Every case also runs on a
# copy of the finished workdir, which must come out byte-identical (hidden files included).
CASES = {
    "unknown_method": (["--config.method=merlinn"], "config.method: unknown method 'merlinn'"),
    "unknown_config_key": (["--config.rhoo=1"], "--config.rhoo=1: unknown config key 'rhoo'"),
    "wrong_type_float": (["--config.rho=abc"], "--config.rho=abc: could not convert string to float"),
    "wrong_type_int": (["--config.total_steps=1.5"], "--config.total_steps=1.5: invalid literal for int()"),
    "inner_steps_negative": (["--config.inner.steps=-1"], "config.inner.steps"),
    "inner_lr_not_positive": (["--config.inner.lr=0"], "config.inner.lr"),
    "rho_negative": (["--config.rho=-1"], "config.rho: must be >= 0, got -1"),
    "unknown_inner_kind": (["--config.inner.kind=newton"], "config.inner.kind"),
    "alpha_out_of_range_joint": (["--config.method=joint", "--config.alpha=1.5"],
                                 "config.alpha: joint training needs 0 <= alpha <= 1, got 1.5"),
    "split_larger_than_target_set": (["--config.split.train_size=100"],
                                     "config.split: train_size + val_size = 120 exceeds the 40 target"),
    "labels_outside_head": (["--config.data.num_target_classes=2"],
                            "config.data.num_target_classes: target_train has labels in [0, 2] but "
                            "the head has 2 classes"),
    "empty_target_set": (["--config.data.target.num_train=0"],
                         "config.data.target.num_train: the target training set is empty"),
    "unprepared_tfds_dataset": (["--config.data.source.name=usps", "--config.data.target.name=usps",
                                 "--config.data.data_dir={tmp}/no_such_data_dir",
                                 "--config.data.num_source_classes=10",
                                 "--config.data.num_target_classes=10"],
                                "python -m merlin_jax.data.prepare usps"),
    "missing_weights_file": (["--config.method=finetune",
                              "--config.pretrained.path={tmp}/missing.safetensors"],
                             "missing.safetensors does not exist"),
    "corrupt_weights_file": (["--config.method=finetune",
                              "--config.pretrained.path={tmp}/garbage.safetensors"],
                             "garbage.safetensors is not a readable safetensors file"),
    "config_file_missing": (["--config={tmp}/no_such_config.py"],
                            "cannot load --config={tmp}/no_such_config.py: [Errno 2] No such file"),
    "workdir_not_writable": (["--workdir={tmp}/a_file/run"], "is not writable"),
    "workdir_is_a_file": (["--workdir={tmp}/a_file"], "is a file"),
    "missing_workdir_flag": ([], "--workdir must have a value", "no_workdir"),
    "unexpected_argument": (["train"], "unexpected arguments: train"),
    "resume_with_different_config": (["--config.rho=0.5"],
                                     "holds a run with a different config (rho: 1.0 there, 0.5 now)",
                                     "finished"),
    "resume_past_total_steps": (["--config.total_steps=5"],
                                "config.total_steps: 5, but the checkpoints", "finished"),
    # Round 2 (issue #19).
    "keep_no_checkpoints": (["--config.keep_checkpoints=0"],
                            "config.keep_checkpoints: must be an integer >= 1"),
    "inner_steps_zero_with_zero_head": (["--config.inner.steps=0"],
                                        "config.inner.steps: 0 with inner.init='zeros'"),
    "no_target_validation_set": (["--config.data.target.num_val=0"],
                                 "config.data.target.num_val: must be an integer >= 1"),
    "eval_batch_size_zero": (["--config.eval.batch_size=0"],
                             "config.eval.batch_size: must be an integer >= 1"),
    "seed_overflows": (["--config.seed=18446744073709551616"],
                       "config.seed: must be an integer in [0, 2**32)"),
    "lr_nan": (["--config.optimizer.lr=nan"], "config.optimizer.lr: must be a finite number > 0"),
    "unknown_optimizer": (["--config.optimizer.name=adamm"],
                          "config.optimizer.name: must be one of adam, adamw, sgd, momentum"),
    "data_dir_below_a_file": (["--config.data.source.name=usps", "--config.data.target.name=usps",
                               "--config.data.data_dir={tmp}/a_file/tfds",
                               "--config.data.num_source_classes=10",
                               "--config.data.num_target_classes=10"],
                              "config.data.data_dir: {tmp}/a_file/tfds is not a directory"),
    "config_get_config_raises": (["--config={tmp}/raises.py"],
                                 "its get_config() raised ValueError: boom: bad arg"),
    "config_without_get_config": (["--config={tmp}/noget.py"],
                                  "the file defines no get_config()"),
    "resume_changes_eval_every": (["--config.eval.every=2"],
                                  "(eval.every: 5 there, 2 now)", "finished"),
    "bad_value_of_a_resumable_key": (["--config.mesh.data=3"], "mesh", "finished"),
    "other_seed_without_config_json": (["--config.seed=1"],
                                       "(seed: 0 there, 1 now) according to its checkpoints",
                                       "finished:no_config_json"),
    "other_seed_with_garbage_config_json": (["--config.seed=1"],
                                            "(seed: 0 there, 1 now) according to its checkpoints",
                                            "finished:garbage_config_json"),
    "workdir_in_use": ([], "is in use by another run (pid 4242 on host elsewhere",
                       "finished:locked"),
}


def _damage(workdir, how):
  """-> an open fd to keep while the case runs (the lock), or None."""
  if how == "no_config_json":
    os.remove(workdir / "config.json")
  elif how == "garbage_config_json":
    (workdir / "config.json").write_text("{not json")
  elif how == "locked":   # another run holds the workdir
    import fcntl
    (workdir / ".lock").write_text('{"pid": 4242, "host": "elsewhere", "started": "then"}')
    fd = os.open(workdir, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd
  return None


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_is_one_line_and_harms_nothing(kind, tmp_path, finished, capfd):
  flags_, fragment, *where = CASES[kind]
  (tmp_path / "a_file").write_text("not a directory")
  (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01 not safetensors" * 10)
  (tmp_path / "raises.py").write_text('def get_config():\n  raise ValueError("boom: bad arg")\n')
  (tmp_path / "noget.py").write_text("X = 1\n")
  args = [a.replace("{tmp}", str(tmp_path)) for a in flags_]
  fragment = fragment and fragment.replace("{tmp}", str(tmp_path))
  config = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), CONFIG)
  args = [a for a in args if not a.startswith("--config=")]
  own_workdir = any(a.startswith("--workdir") for a in args) or where == ["no_workdir"]
  workdir = None if own_workdir else tmp_path / "run"
  fd = None
  if where and where[0].startswith("finished"):
    shutil.copytree(finished, workdir)
    fd = _damage(workdir, where[0].partition(":")[2])
    before = snapshot(workdir)
  try:
    code, err = run_cli(args, capfd, config=config, workdir=workdir)
  finally:
    if fd is not None:
      os.close(fd)
  message = assert_one_line_error(code, err, fragment)
  if os.environ.get("MERLIN_PRINT_TABLE"):   # the kind -> message table, for the docs
    with capfd.disabled():
      print(f"TABLE|{kind}|{message}", flush=True)
  # The same bad command on a finished run's workdir: one line, and every file unchanged.
  if own_workdir:   # the bad input is the workdir itself: no finished run to harm
    return
  if where:   # the damaged / finished workdir it ran on is exactly as it was
    assert snapshot(workdir) == before
    if where != ["finished"]:
      return
  else:       # a failed start leaves no trace in a new workdir
    assert not workdir.exists() or not os.listdir(workdir), os.listdir(workdir)
  if where != ["finished"]:
    copy = tmp_path / "finished_copy"
    shutil.copytree(finished, copy)
    before = snapshot(copy)
    code, err = run_cli(args, capfd, config=config, workdir=copy)
    assert_one_line_error(code, err)
  else:
    copy = workdir
  assert snapshot(copy) == before


def test_verbose_shows_the_traceback(tmp_path, capfd):
  from merlin_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="config.rho"):
    run_cli(["--config.rho=-1", "--verbose"], capfd, workdir=tmp_path / "run")


# --- the real command line ------------------------------------------------------------------


def _subprocess(args, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "merlin_jax.main", *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  return out.returncode, out.stderr


@pytest.mark.parametrize("kind, args, devices, fragment", [
    ("config_file_missing", ["--config={tmp}/nope.py"], 1, "cannot load --config="),
    ("unknown_config_key", ["--config=" + CONFIG, "--config.inner.stepz=3"], 1,
     "--config.inner.stepz=3: unknown config key 'stepz'"),
    ("batch_not_divisible_by_devices", ["--config=" + CONFIG, "--config.batch_size=15"], 2,
     "config.batch_size: 15 is not divisible by the 2 devices"),
])
def test_bad_input_subprocess(kind, args, devices, fragment, tmp_path):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args] + [f"--workdir={tmp_path / 'run'}"]
  code, err = _subprocess(args, devices)
  message = assert_one_line_error(code, err, fragment)
  print(f"TABLE|{kind}|{message}")


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_corrupt_tfds_records_are_one_line(damage, tmp_path, capfd):
  """A prepared dataset whose record files were cut or overwritten: one line naming the
  data, exit 2 (not TensorFlow's DataLossError traceback)."""
  import bz2
  import numpy as np
  from merlin_jax.data import prepare
  rng = np.random.default_rng(0)
  manual = tmp_path / "usps"
  manual.mkdir()
  for fname, n in (("usps.bz2", 40), ("usps.t.bz2", 20)):
    lines = [" ".join([str(i % 10 + 1)] + [f"{j + 1}:{v:.3f}" for j, v in
                                            enumerate(rng.uniform(-1, 1, 256))])
             for i in range(n)]
    with bz2.open(manual / fname, "wt") as f:
      f.write("\n".join(lines) + "\n")
  data_dir = tmp_path / "tfds"
  prepare.prepare("usps", str(manual), str(data_dir))
  for record in glob.glob(str(data_dir / "usps" / "*" / "*.tfrecord*")):
    size = os.path.getsize(record)
    if damage == "truncated":
      os.truncate(record, size // 2)
    else:
      with open(record, "r+b") as f:
        f.seek(size // 3)
        f.write(b"\xff" * 64)
  code, err = run_cli(["--config.data.source.name=usps", "--config.data.target.name=usps",
                       f"--config.data.data_dir={data_dir}", "--config.data.image_size=16",
                       "--config.data.num_source_classes=10",
                       "--config.data.num_target_classes=10", "--config.method=joint",
                       "--config.data.target.num_train=20", "--config.data.target.num_val=10"],
                      capfd, workdir=tmp_path / "run")
  message = assert_one_line_error(code, err, "cannot read the data of config.data")
  assert not (tmp_path / "run").exists()
  if os.environ.get("MERLIN_PRINT_TABLE"):
    with capfd.disabled():
      print(f"TABLE|tfds_records_{damage}|{message}", flush=True)
