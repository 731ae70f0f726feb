"""The one error boundary (merlin_jax/boundary.py), driven by tables of bad inputs.

For every public entry point - `merlin_jax.load`, `Model.predict`/`features`, the predict
command line, `main`, and the compare / suite / sweep command lines - each bad input gives
ONE line (an `InputError`/`UserError`/`DamagedError`/`StorageError` message in the API; a
`PROG: error: ...` line on stderr with the documented exit status at the command line),
never a wrong answer in silence, and nothing on disk changes.

Also: the input contract of a loaded image model (integers are pixel values, floats are in
[0, 1], one image is a batch of one), the export's digest (a flipped byte does not load),
the issue-29 points checked on a finished run (the export follows the umask, best/ keeps
the selected step only, no lock litter), and the raw 8x8 scikit-learn digits predicted
through the export's recorded preprocessing.
"""

import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from merlin_jax import export, train
from merlin_jax.runtime import checkpointing
from merlin_jax.errors import DamagedError, InputError, StorageError, UserError
from merlin_jax.runtime.metrics import read_jsonl
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(*roots):
  """path -> sha256 of every file under roots (what 'nothing on disk changed' compares)."""
  out = {}
  for root in roots:
    for f in sorted(glob.glob(os.path.join(root, "**"), recursive=True, include_hidden=True)):
      if os.path.isfile(f):
        with open(f, "rb") as fh:
          out[f] = hashlib.sha256(fh.read()).hexdigest()
      elif os.path.isdir(f):
        out[f] = "dir"
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished tiny synthetic run (joint), and an image-model variant of its export (the
  same weights, sealed with an image input spec: 8x8 gray, as the predict CLI test does)."""
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  root = tmp_path_factory.mktemp("bad_inputs")
  workdir = str(root / "run")
  old = os.umask(0o022)
  try:
    train.train_and_evaluate(tiny_config("joint"), workdir)
  finally:
    os.umask(old)
  flat, meta = export.read(workdir)
  meta["input"] = {"kind": "image", "shape": [8, 8, 1], "dtype": "float32", "image_size": 8,
                   "channels": 1, "crop": False, "range": [0.0, 1.0]}
  image_model = str(root / "image_model.safetensors")
  from safetensors.numpy import save_file
  save_file(flat, image_model, metadata=export.seal({export.KEY: json.dumps(meta)}, flat))
  return workdir, image_model


@pytest.fixture(scope="module")
def image_model(run):
  import merlin_jax
  return merlin_jax.load(run[1])


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]   # nothing listens there once closed


# --- the finished run: issue-29 points -----------------------------------------------------


def test_a_finished_workdir_keeps_what_a_user_needs(run):
  workdir, _ = run
  final = train.final_metrics(workdir)
  # The export follows the umask (safetensors' save_file made it 0600).
  assert oct(os.stat(os.path.join(workdir, checkpointing.EXPORT)).st_mode & 0o777) == "0o644"
  # best/ keeps the selected step (and the kept checkpoints' selections, for a resume from
  # them), not every improvement on the way.
  ckpts = os.path.join(workdir, checkpointing.CHECKPOINTS)
  needed = {final["selected_step"]} | {
      checkpointing.step_metadata(ckpts, int(s))["best_step"] for s in os.listdir(ckpts)}
  evals = [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
           if "target_val_accuracy" in r]
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, checkpointing.BEST))) == sorted(
      needed)
  assert len(needed) <= len(os.listdir(ckpts)) + 1 and len(evals) >= 2
  # No lock litter, no temporary files.
  names = os.listdir(workdir)
  assert ".lock" not in names and not [n for n in names if n.endswith(".tmp")], names


# --- the API: Model.predict / features ------------------------------------------------------


def test_image_model_input_contract(image_model):
  model = image_model
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
  ref = model.logits(u8)
  # Integers of any dtype are pixel values, scaled like training (it was 0.597 vs 0.939).
  np.testing.assert_array_equal(model.logits(u8.astype(np.int64)), ref)
  np.testing.assert_array_equal(model.logits(u8[..., 0]), ref)        # [N, H, W] gray
  # Floats are pixels in [0, 1].
  np.testing.assert_allclose(model.logits(u8.astype(np.float32) / 255), ref, atol=1e-5)
  # One image without a batch axis is a batch of one (it gave 28 predictions).
  np.testing.assert_array_equal(model.predict(u8[0]), model.predict(u8)[:1])
  np.testing.assert_array_equal(model.predict(u8[0, ..., 0]), model.predict(u8)[:1])
  # A larger image is resized like the pipeline's; a list of differently sized ones works.
  assert model.predict([rng.integers(0, 256, (16, 12)).astype(np.uint8), u8[0]]).shape == (2,)


def _huge():   # > PIL's bomb limit of pixels, without the memory (a broadcast view)
  return np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (1, 9500, 9500, 1))


API_CASES = [   # (name, inputs, fragment of the one-line message)
    ("float_0_255", lambda u8: u8.astype(np.float32), "float pixels must be in [0, 1]"),
    ("float64_0_255", lambda u8: u8.astype(np.float64), "divide by 255"),
    ("int_over_255", lambda u8: u8.astype(np.int64) * 16, "must be 0..255"),
    ("negative_int", lambda u8: u8.astype(np.int16) - 300, "must be 0..255"),
    ("nan", lambda u8: np.where(u8 > 128, np.nan, u8 / 255.0), "NaN/inf"),
    ("inf", lambda u8: np.where(u8 > 128, np.inf, u8 / 255.0), "NaN/inf"),
    ("bool", lambda u8: u8 > 128, "boolean images"),
    ("strings_array", lambda u8: np.array(["a", "b"]), "dtype <U1"),
    ("object", lambda u8: np.array([None, 1], dtype=object), "dtype object"),
    ("empty_batch", lambda u8: u8[:0], "empty batch"),
    ("empty_list", lambda u8: [], "empty list"),
    ("rank_0", lambda u8: np.uint8(3), "rank 0"),
    ("rank_1", lambda u8: u8.reshape(-1), "rank 1"),
    ("rank_5", lambda u8: u8[None], "rank 5"),
    ("seven_channels", lambda u8: np.repeat(u8, 7, axis=-1), "channels (last axis)"),
    ("ragged_list", lambda u8: [[1, 2], [3]], "an image is [H, W, C]"),
    ("ragged_nested", lambda u8: [[[1, 2], [3]]], "not an array"),
    ("missing_file", lambda u8: ["/no/such/image.png"], "does not exist"),
    ("huge", lambda u8: _huge(), "decompression-bomb size"),
]


@pytest.mark.parametrize("name,make,fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_inputs_are_one_line(run, image_model, name, make, fragment):
  workdir, path = run
  model = image_model
  before = snapshot(workdir, os.path.dirname(path))
  u8 = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
  for fn in (model.predict, model.features):
    with pytest.raises(InputError) as e:
      fn(make(u8))
    message = str(e.value)
    assert fragment in message and "\n" not in message, message
  assert snapshot(workdir, os.path.dirname(path)) == before
  print(f"TABLE|api|{name}|{message}")


def test_arrays_model_contract(run):
  import merlin_jax
  workdir, _ = run
  model = merlin_jax.load(workdir)   # the synthetic pair: float arrays [N, 8, 8, 1]
  x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
  np.testing.assert_array_equal(model.predict(x[0]), model.predict(x)[:1])
  for bad, fragment in ((x[:0], "empty batch"), (x.reshape(-1), "shape [256]"),
                        (np.full_like(x, np.nan), "NaN/inf"), (x[None], "shape [1, 4, 8")):
    with pytest.raises(InputError, match=None) as e:
      model.predict(bad)
    assert fragment in str(e.value), str(e.value)


def test_image_files_non_image_and_decompression_bomb(image_model, tmp_path):
  from PIL import Image
  model = image_model
  (tmp_path / "notes.png").write_text("this is not an image")
  Image.new("1", (15000, 15000)).save(tmp_path / "bomb.png")   # 225 Mpixel, a few kB
  Image.fromarray(np.full((10, 12), 200, np.uint8)).save(tmp_path / "ok.png")
  for name, fragment in (("notes.png", "not an image PIL can read"),
                         ("bomb.png", "too large to decode safely")):
    with pytest.raises(InputError) as e:
      model.predict([str(tmp_path / name)])
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert model.predict(str(tmp_path / "ok.png")).shape == (1,)   # one file name: one image


# --- the export digest ----------------------------------------------------------------------


def test_a_flipped_byte_anywhere_in_the_export_does_not_load(run, tmp_path):
  """Every byte position class: tensor data, the metadata JSON, the digest itself. It
  loaded silently before (accuracy 0.33, and the predict CLI printed an accuracy, rc 0)."""
  import merlin_jax
  workdir, _ = run
  data = open(os.path.join(workdir, checkpointing.EXPORT), "rb").read()
  header = 8 + int.from_bytes(data[:8], "little")
  digest_at = data.index(b"sha256:") + 10
  positions = {"tensor": header + (len(data) - header) // 2, "last_tensor_byte": len(data) - 1,
               "metadata": data.index(b"joint"), "digest": digest_at, "length": 0}
  for what, at in positions.items():
    bad = bytearray(data)
    bad[at] ^= 0x01
    path = tmp_path / f"{what}.safetensors"
    path.write_bytes(bytes(bad))
    with pytest.raises(UserError) as e:
      merlin_jax.load(str(path))
    assert str(e.value).startswith(f"damaged: {path}"), (what, str(e.value))
    assert isinstance(e.value, DamagedError)
  merlin_jax.load(os.path.join(workdir, checkpointing.EXPORT))   # the intact file loads
  # A pre-trained start (config.pretrained.path) is checked the same way.
  bad = bytearray(data)
  bad[positions["tensor"]] ^= 0x01
  (tmp_path / "start.safetensors").write_bytes(bytes(bad))
  with pytest.raises(DamagedError):
    checkpointing.load_safetensors(str(tmp_path / "start.safetensors"))


# --- load: missing / wrong / unreachable ------------------------------------------------------


def test_load_bad_paths_are_one_line(run, tmp_path, monkeypatch):
  import merlin_jax
  workdir, _ = run
  unfinished = tmp_path / "unfinished"
  shutil.copytree(os.path.join(workdir, checkpointing.CHECKPOINTS),
                  unfinished / checkpointing.CHECKPOINTS)
  (tmp_path / "empty").mkdir()
  (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00")
  cases = [(str(tmp_path / "nope"), UserError, "does not exist"),
           (str(unfinished), UserError, "holds an unfinished run"),
           (str(tmp_path / "empty"), UserError, "is not the workdir of a run"),
           (str(tmp_path / "torn.safetensors"), DamagedError, "damaged: ")]
  for path, kind, fragment in cases:
    with pytest.raises(kind) as e:
      merlin_jax.load(path)
    assert fragment in str(e.value) and "config.pretrained" not in str(e.value), str(e.value)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_closed_port()}")
  with pytest.raises(StorageError, match="storage unreachable: gs://b/run"):
    merlin_jax.load("gs://b/run")


# --- the command lines ---------------------------------------------------------------------


def _env(**extra):
  return dict(os.environ, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0", PYTHONPATH=ROOT,
              TF_CPP_MIN_LOG_LEVEL="2", **extra)


def _one_line(out, code, prog, fragment):
  assert out.returncode == code, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith(f"{prog}:")]
  assert len(lines) == 1 and out.stderr.strip().splitlines()[-1] == lines[0], out.stderr[-3000:]
  assert fragment in lines[0], lines[0]
  return lines[0]


def test_predict_cli_bad_inputs(run, tmp_path):
  """One subprocess per case would cost ~5 s each: the cases run in one process through
  the CLI's own entry (absl flag parsing, the boundary) and one real subprocess checks the
  damaged-export exit status."""
  workdir, image_model = run
  unfinished = tmp_path / "unfinished"
  shutil.copytree(os.path.join(workdir, checkpointing.CHECKPOINTS),
                  unfinished / checkpointing.CHECKPOINTS)
  (tmp_path / "imgs" / "0").mkdir(parents=True)
  (tmp_path / "imgs" / "0" / "a.png").write_text("not an image")
  (tmp_path / "lines.txt").write_text("hello\n")
  damaged = tmp_path / "damaged.safetensors"
  data = bytearray(open(os.path.join(workdir, checkpointing.EXPORT), "rb").read())
  data[-1] ^= 0x01
  damaged.write_bytes(bytes(data))
  script = f"""
import sys
from absl import app
from merlin_jax import boundary, predict
cases = {{
  "missing_model": ["--model={tmp_path}/nope", "--eval_set=target_test"],
  "unfinished": ["--model={unfinished}", "--eval_set=target_test"],
  "damaged": ["--model={damaged}", "--eval_set=target_test"],
  "text_on_image_model": ["--model={image_model}", "--text={tmp_path}/lines.txt"],
  "non_image_png": ["--model={image_model}", "--images={tmp_path}/imgs"],
  "no_source": ["--model={image_model}"],
  "unknown_flag": ["--model={image_model}", "--imagez=x"],
}}
name = sys.argv[1]
app.run(boundary.entry("merlin_jax", predict.main), argv=["predict"] + cases[name],
        flags_parser=boundary.flags_parser("merlin_jax"))
"""
  expected = {"missing_model": "does not exist", "unfinished": "holds an unfinished run",
              "damaged": "damaged: ", "text_on_image_model": "--text: this is an image model",
              "non_image_png": "not an image PIL can read",
              "no_source": "give exactly one of", "unknown_flag": "imagez"}
  before = snapshot(workdir, str(tmp_path))
  for name, fragment in expected.items():
    out = subprocess.run([sys.executable, "-c", script, name], env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    line = _one_line(out, 2, "merlin_jax", fragment)
    print(f"TABLE|predict|{name}|{line}")
  assert snapshot(workdir, str(tmp_path)) == before
  # The endpoint down: one line, status 74, in seconds (it was a traceback after ~70 s).
  out = subprocess.run([sys.executable, "-m", "merlin_jax.predict", "--model=gs://b/run",
                        "--eval_set=target_test"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=_env(STORAGE_EMULATOR_HOST=
                                             f"http://127.0.0.1:{_closed_port()}"))
  print("TABLE|predict|unreachable|" + _one_line(out, 74, "merlin_jax", "storage unreachable"))


@pytest.mark.parametrize("module,args,fragment", [
    ("merlin_jax.compare", ["--config=/no/such.py", "--workdir=/tmp/x"], "no/such.py"),
    ("merlin_jax.compare", ["--workdir=/tmp/x"], "--config"),
    ("merlin_jax.experiments.suite", ["--stepz=3"], "stepz"),
    ("merlin_jax.experiments.target_size", ["--steps=many"], "steps"),
], ids=["compare_missing_config", "compare_no_config", "suite_unknown_flag",
        "sweep_bad_int"])
def test_driver_clis_bad_input_is_one_line(module, args, fragment, tmp_path):
  out = subprocess.run([sys.executable, "-m", module, *args], env=_env(), cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300)
  line = _one_line(out, 2, module, fragment)
  assert os.listdir(tmp_path) == [] and not os.path.exists("/tmp/x/compare.md")
  print(f"TABLE|{module}|{line}")


def test_raw_8x8_digits_scans_predict_like_the_evaluated_images(tmp_path):
  """Issue 29: the export records how the evaluated data was made from raw inputs (here the
  dataset's own PIL bicubic 8x8 -> 28x28, then the pipeline's scaling), and predict applies
  it: raw scikit-learn scans give the predictions of the stored test images, not those of
  TF's bilinear resize (0.9536 instead of 0.9586 on the full digits run)."""
  import merlin_jax
  from sklearn.datasets import load_digits
  from merlin_jax.config_base import load_config
  from merlin_jax.data.builders import common, sklearn_digits
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  config = load_config(os.path.join(ROOT, "configs", "digits.py") + ":local")
  config.method = "target_only"
  workdir = str(tmp_path / "digits")
  train.train_and_evaluate(config, workdir)
  model = merlin_jax.load(workdir)
  assert model.input_spec["stored"] == {"size": 28, "method": "pil_bicubic"}
  d = load_digits()
  _, test_idx = common.stratified_split(
      d.target, test_fraction=1.0 - sklearn_digits.NUM_TRAIN / len(d.target), seed=0)
  stored, labels = sklearn_digits.load_split_arrays(28)["test"]
  raw = np.round(d.images[test_idx] * (255.0 / 16.0)).astype(np.uint8)   # [N, 8, 8]
  np.testing.assert_array_equal(model.predict(raw), model.predict(stored))
  reported = train.final_metrics(workdir)["target_test_accuracy"]
  assert model.accuracy(raw, labels) == pytest.approx(reported, abs=1e-9)
  # Without the recorded resize (TF bilinear straight to 28) the answers differ.
  model.input_spec.pop("stored")
  assert not np.array_equal(model.predict(raw), model.predict(stored))


def test_storage_faults_are_classified_from_any_layer():
  """The failures seen from gcsfs/aiohttp, tensorstore (curl) and the OS become one-line
  StorageErrors (exit 74); anything else stays what it is (a bug: exit 1)."""
  import errno
  from merlin_jax import boundary
  cases = {
      "storage full": [OSError(errno.ENOSPC, "No space left on device"),
                       OSError(errno.EFBIG, "File too large"),
                       ValueError('OUT_OF_RANGE: Error writing "x": Failed to write 1907 bytes '
                                  "to file 8: File too large [os_error_code='27']")],
      "storage unreachable": [
          ConnectionRefusedError(111, "Connection refused"),
          ValueError("ABORTED: Error writing gs://b/x: All 3 retry attempts failed: CURL error "
                     "Could not connect to server [curl_code='7']"),
          RuntimeError("Cannot connect to host 127.0.0.1:1 ssl:default")],
  }
  for fragment, errors in cases.items():
    for e in errors:
      try:   # a chain, as the layers raise them
        try:
          raise e
        except Exception as inner:  # noqa: BLE001
          raise RuntimeError("save failed") from inner
      except RuntimeError as outer:
        fault = boundary.storage_fault(outer, "gs://b/x")
      assert fault is not None and str(fault).startswith(fragment), (e, fault)
      assert boundary.exit_code(fault) == 74 and "\n" not in str(fault)
  assert boundary.storage_fault(ValueError("shapes do not match")) is None
  assert boundary.exit_code(ValueError("x")) == 1
