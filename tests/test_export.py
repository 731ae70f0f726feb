"""The product of a run: model.safetensors reproduces the reported target test accuracy for
every method (reloaded in a fresh process through `merlin_jax.load`), carries its metadata,
and the load-and-predict API / `python -m merlin_jax.predict` work on it. Also: the logged
loss is the mean over the logging window and survives a resume; `import merlin_jax` is light.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from merlin_jax import train
from merlin_jax.methods import METHODS as REGISTERED
from merlin_jax.runtime.metrics import read_jsonl
from tests.helpers import TIMING_KEYS, tiny_config, write_random_hf_bert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = sorted(REGISTERED)   # every method of the package


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One finished tiny synthetic run per method: {method: workdir}."""
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  root = tmp_path_factory.mktemp("runs")
  out = {}
  for method in METHODS:
    workdir = str(root / method)
    train.train_and_evaluate(tiny_config(method), workdir)
    out[method] = workdir
  return out


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", MERLIN_JAX_TENSORBOARD="0",
              PYTHONPATH=ROOT)


_RELOAD = textwrap.dedent("""
    import json, sys
    import merlin_jax
    from merlin_jax.data import pipeline
    out = {}
    for workdir in sys.argv[1:]:
      model = merlin_jax.load(workdir)
      data = pipeline.load_transfer_data(model.config.data, model.config.seed,
                                         need_source=False)
      test = data.eval_data["target_test"].arrays
      out[workdir] = model.accuracy(test["inputs"], test["label"])
    print("RESULT", json.dumps(out))
""")


def test_export_reproduces_reported_accuracy_in_a_fresh_process(runs):
  out = subprocess.run([sys.executable, "-c", _RELOAD, *runs.values()], env=_env(),
                       capture_output=True, text=True, timeout=600, cwd="/")
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
  reloaded = json.loads(line[len("RESULT "):])
  for method, workdir in runs.items():
    reported = train.final_metrics(workdir)["target_test_accuracy"]
    assert reloaded[workdir] == reported, (method, reloaded[workdir], reported)


@pytest.mark.parametrize("method", ["merlin", "joint"])
def test_export_metadata(runs, method):
  from merlin_jax import export
  flat, meta = export.read(runs[method])
  assert meta["format"] == export.FORMAT and meta["method"] == method
  assert meta["eval_head"] == ("probe" if method == "merlin" else "learned")
  assert meta["num_classes"] == 3 and meta["classes"] == []
  assert meta["input"]["shape"] == [8, 8, 1]
  assert meta["config"]["method"] == method
  final = {k: v for k, v in train.final_metrics(runs[method]).items()
           if k not in TIMING_KEYS and k != "step"}
  assert meta["metrics"] == final
  assert flat["params/target_head/w"].shape == (16, 3)
  if method == "joint":   # a learned head: exported as trained, with the source head
    assert "params/source_head/w" in flat


def test_api_on_a_trained_run(runs, tmp_path):
  import merlin_jax
  from merlin_jax.data import pipeline
  from merlin_jax.errors import UserError
  model = merlin_jax.load(os.path.join(runs["merlin"], "model.safetensors"))
  assert model.method == "merlin" and model.config.model.feature_dim == 16
  assert model.classes == ["0", "1", "2"]
  data = pipeline.load_transfer_data(model.config.data, model.config.seed, need_source=False)
  x = data.eval_data["target_test"].arrays["inputs"][:7]
  feats, logits, pred = model.features(x), model.logits(x), model.predict(x)
  assert feats.shape == (7, 16) and logits.shape == (7, 3) and pred.shape == (7,)
  np.testing.assert_array_equal(pred, np.argmax(logits, -1))
  np.testing.assert_array_equal(model.predict(list(x)), pred)   # a list of rows works too
  # A safetensors file without the metadata (e.g. a BERT weights file): one clear error.
  from safetensors.numpy import save_file
  save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "bare.safetensors"))
  with pytest.raises(UserError, match="no merlin_jax export metadata"):
    merlin_jax.load(str(tmp_path / "bare.safetensors"))


def test_predict_cli(runs, tmp_path):
  reported = train.final_metrics(runs["merlin"])["target_test_accuracy"]
  cmd = [sys.executable, "-m", "merlin_jax.predict", f"--model={runs['merlin']}"]
  out = subprocess.run(cmd + ["--eval_set=target_test", "--quiet"], env=_env(),
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == f"accuracy {reported:.4f} (150 examples)"

  # A folder of images, labelled by sub-folder: the same model with an image input spec.
  from PIL import Image
  from safetensors.numpy import save_file
  from merlin_jax import export
  flat, meta = export.read(runs["merlin"])
  meta["input"] = {"kind": "image", "shape": [8, 8, 1], "dtype": "float32", "image_size": 8,
                   "channels": 1, "crop": False}
  save_file(flat, str(tmp_path / "image_model.safetensors"),   # edited: sealed anew
            metadata=export.seal({export.KEY: json.dumps(meta)}, flat))
  rng = np.random.default_rng(0)
  for label in ("0", "2"):
    os.makedirs(tmp_path / "imgs" / label)
    for i in range(3):
      Image.fromarray(rng.integers(0, 255, (12, 10), np.uint8)).save(
          tmp_path / "imgs" / label / f"{i}.png")
  out = subprocess.run([sys.executable, "-m", "merlin_jax.predict",
                        f"--model={tmp_path / 'image_model.safetensors'}",
                        f"--images={tmp_path / 'imgs'}"], env=_env(), capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 7 and lines[-1].startswith("accuracy ") and "(6 examples)" in lines[-1]
  assert all(l.split("\t")[1] in ("0", "1", "2") for l in lines[:6])
  bad = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert bad.returncode == 2 and "merlin_jax: error: give exactly one of" in bad.stderr


def test_logged_loss_is_the_window_mean_and_survives_a_resume(tmp_path):
  os.environ["MERLIN_JAX_TENSORBOARD"] = "0"
  every = tiny_config("joint")           # log_every=1: each step's loss
  train.train_and_evaluate(every, str(tmp_path / "every"))
  per_step = {r["step"]: r["loss"] for r in read_jsonl(str(tmp_path / "every" / "metrics.jsonl"))
              if "loss" in r}
  cfg = lambda: tiny_config("joint", log_every=4)   # checkpoints every 5
  full = tmp_path / "full"
  train.train_and_evaluate(cfg(), str(full))
  logged = {r["step"]: r for r in read_jsonl(str(full / "metrics.jsonl")) if "loss" in r}
  assert sorted(logged) == [4, 8, 10]
  assert logged[8]["loss"] == pytest.approx(np.mean([per_step[s] for s in range(5, 9)]),
                                            rel=1e-6)
  assert logged[10]["loss_last"] == per_step[10] and logged[10]["lr"] == 1e-3
  # A kill after step 5's checkpoint: the window of step 8 (steps 5-8) straddles it.
  part = tmp_path / "part"
  shutil.copytree(full, part)
  shutil.rmtree(part / "checkpoints" / "10")
  os.remove(part / "model.safetensors")
  train.train_and_evaluate(cfg(), str(part))
  strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]
  assert strip(read_jsonl(str(part / "metrics.jsonl"))) == strip(
      read_jsonl(str(full / "metrics.jsonl")))


def test_import_is_light():
  code = ("import sys, merlin_jax; heavy = [m for m in ('jax', 'tensorflow', 'flax') "
          "if m in sys.modules]; print('HEAVY', heavy)")
  out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                       text=True, timeout=120, cwd="/")
  assert out.returncode == 0 and "HEAVY []" in out.stdout, out.stderr[-2000:]


def test_text_model_predicts_strings(tmp_path):
  """A BERT run (random tiny weights, mock GLUE data): the export tokenises raw text with
  the model's own tokenizer and reproduces the reported accuracy on the tokenised test set."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tokenizers")
  import merlin_jax
  from merlin_jax.config_base import load_config
  from merlin_jax.data import pipeline
  bert_dir = write_random_hf_bert(tmp_path / "bert")
  c = load_config(os.path.join(ROOT, "configs", "glue_mrpc.py") +
                  f":merlin_ft,local,bert_dir={bert_dir}")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.text.max_length = 12
  c.total_steps, c.eval.batch_size = 2, 8
  c.data.target.num_train, c.data.target.num_val = 16, 8
  workdir = str(tmp_path / "work")
  with tfds.testing.mock_data(num_examples=32):
    final = train.train_and_evaluate(c, workdir)
    model = merlin_jax.load(workdir)
    test = pipeline.load_transfer_data(model.config.data, model.config.seed,
                                       need_source=False).eval_data["target_test"].arrays
  assert model.input_spec["kind"] == "text" and model.method == "merlin_ft"
  assert model.accuracy(test["inputs"], test["label"]) == final["target_test_accuracy"]
  pairs = [("the cat sat", "a cat was sitting"), ("it rains", "the sun is out")]
  pred = model.predict(pairs)
  assert pred.shape == (2,) and set(pred) <= {0, 1}
  assert model.features(["one sentence only"]).shape[0] == 1
  tokens = model.tokenize(pairs)
  assert tokens["input_ids"].shape == (2, 12)
  np.testing.assert_array_equal(model.predict(tokens), pred)   # token arrays work as is
