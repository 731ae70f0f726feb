"""A researcher's own data (merlin_jax/data/own_data.py): a folder of images or a CSV / JSONL
of texts becomes a TFDS dataset, prepared once with TFDS's ImageFolder; shipped configs by
name from any directory; the README's own-data block, run end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from merlin_jax.data import own_data, tfds_io
from merlin_jax.errors import DataError
from tests.helpers import write_image_folder, write_text_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_folder_is_prepared_once_by_tfds_image_folder(tmp_path):
  pixels = write_image_folder(str(tmp_path / "xray"))
  data_dir = str(tmp_path / "tfds")
  name = f"folder:{tmp_path / 'xray'}"
  builder = tfds_io.get_builder(name, data_dir)
  assert builder.name == own_data.tfds_name(name) and builder.name.startswith("own_folder_xray_")
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 24, "test": 8}
  assert builder.info.features["label"].names == ["cat", "dog"]
  assert tuple(builder.info.features["image"].shape) == (None, None, 1)   # grayscale kept
  tfds = tfds_io.import_tfds()
  ex = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
  # Every stored image is one of the files, pixel for pixel, with its folder's label.
  by_bytes = {v.tobytes(): p for p, v in pixels.items()}
  for img, label in zip(ex["image"], ex["label"]):
    path = by_bytes[img[..., 0].tobytes()]
    assert path.split(os.sep)[-3:-1] == ["test", ["cat", "dog"][label]]
  info = os.path.join(builder.data_dir, "dataset_info.json")
  stamp = os.stat(info).st_mtime_ns
  assert tfds_io.get_builder(name, data_dir).data_dir == builder.data_dir   # reused
  assert os.stat(info).st_mtime_ns == stamp
  Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "xray/train/cat/new.png")
  rebuilt = tfds_io.get_builder(name, data_dir)                  # the folder changed
  assert rebuilt.info.splits["train"].num_examples == 25


def test_a_folder_without_train_or_a_missing_path_is_one_line(tmp_path):
  write_image_folder(str(tmp_path / "x"), n_test=0)
  os.rename(tmp_path / "x/train", tmp_path / "x/val")
  with pytest.raises(DataError, match="no train/ sub-folder") as e:
    tfds_io.get_builder(f"folder:{tmp_path / 'x'}", str(tmp_path / "tfds"))
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match="does not exist"):
    tfds_io.get_builder(f"folder:{tmp_path / 'nope'}", str(tmp_path / "tfds"))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_text_table_is_a_tfds_text_dataset(tmp_path, kind):
  from merlin_jax.data import text
  rows = [{"text": f"first {i}, with a comma", "text_pair": f"second {i}", "label": str(i % 3)}
          for i in range(9)]
  os.makedirs(tmp_path / "t")
  write_text_table(str(tmp_path / "t" / f"train.{kind}"), kind, rows)
  write_text_table(str(tmp_path / "t" / f"test.{kind}"), kind, rows[:4])
  name, data_dir = f"{kind}:{tmp_path / 't'}", str(tmp_path / "tfds")
  builder = tfds_io.get_builder(name, data_dir)
  assert builder.info.features["label"].names == ["0", "1", "2"]
  texts, labels = text.read_split(builder, name, data_dir, "test", ("text", "text_pair"))
  assert texts["text"] == [r["text"] for r in rows[:4]]
  assert texts["text_pair"] == [r["text_pair"] for r in rows[:4]]
  np.testing.assert_array_equal(labels, [0, 1, 2, 0])
  # One file is the train split; a row without a label is one line naming the columns.
  write_text_table(str(tmp_path / f"bad.{kind}"), kind, [{"text": "a"}])
  with pytest.raises(DataError, match="lacks a 'text' or 'label' column"):
    tfds_io.get_builder(f"{kind}:{tmp_path / f'bad.{kind}'}", data_dir)


def test_shipped_configs_by_name_from_any_directory(tmp_path, monkeypatch):
  from merlin_jax import config_names
  from merlin_jax.config_base import load_config
  monkeypatch.chdir(tmp_path)
  assert "digits" in config_names.shipped() and "common" not in config_names.shipped()
  assert load_config("digits:local").total_steps == 20
  assert load_config("digits").total_steps == 600
  assert config_names.resolve_argv(["x", "--config=digits:local", "--workdir=w"])[1] == (
      "--config=" + os.path.join(config_names.configs_dir(), "digits.py") + ":local")
  # A path is a path (the repo's, and a file of one's own named like a shipped config).
  assert load_config(os.path.join(ROOT, "configs", "digits.py:local")).total_steps == 20
  (tmp_path / "digits.py").write_text(
      "from merlin_jax.configs import common\nfrom merlin_jax.config_base import base_config\n"
      "def get_config(arg=None):\n  c = base_config()\n  c.total_steps = 7\n  return c\n")
  assert load_config("digits.py").total_steps == 7             # a path: the user's file
  assert load_config("digits").total_steps == 600              # a name: the shipped one
  with pytest.raises(Exception, match="shipped config by name"):
    load_config("digitz")


def readme_block(marker):
  """The ```bash block after the README line containing `marker`, continuations joined."""
  text = open(os.path.join(ROOT, "README.md")).read()
  start = text.index(marker)
  block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
  lines = block.replace("\\\n", " ").splitlines()
  return [l.split(" #")[0].strip() for l in lines if l.strip() and not l.startswith("#")]


def test_readme_own_images_block_runs_end_to_end(tmp_path, capfd):
  """The README's folder -> prepare -> train -> predict block, on 2 x 12 tiny images and a
  few steps (the source shrunk to printed_digits/tiny). The two CLIs run as written; the
  training line runs in this process (`python -m merlin_jax.main`'s own entry point, as
  tests/test_cli.py does: one interpreter start less)."""
  from tests.helpers import run_cli
  write_image_folder(str(tmp_path / "xray"), size=(28, 28))   # the model's size
  lines = readme_block("<!-- own-images -->")
  assert [l.split()[2] for l in lines] == ["merlin_jax.data.prepare", "merlin_jax.main",
                                           "merlin_jax.predict"]
  env = dict(os.environ, PYTHONPATH=ROOT, DATA=str(tmp_path / "tfds"),
             JAX_PLATFORMS="cpu")
  small = (" --config.data.source.name=printed_digits/tiny --config.total_steps=4"
           " --config.eval.every=2 --config.log_every=2 --config.data.target.num_train=8"
           " --config.data.target.num_val=8 --config.split.train_size=4"
           " --config.split.val_size=4 --config.inner.steps=2 --config.batch_size=16")
  outs = []
  for line in lines:
    cmd = line.replace("/data/xray", str(tmp_path / "xray")).replace(
        "/tmp/merlin/xray", str(tmp_path / "run")).replace("python ", f"{sys.executable} ", 1)
    if "merlin_jax.main" in cmd:
      args = [a.replace("$DATA", env["DATA"]) for a in (cmd + small).split()[3:]]
      code, err = run_cli(args, capfd, config=None)
      assert code == 0, err[-3000:]
      outs.append(err)
      continue
    out = subprocess.run(["bash", "-c", cmd], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (cmd, out.stderr[-3000:])
    outs.append(out.stdout + out.stderr)
  assert "prepared folder:" in outs[0]
  metrics = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert "target_test_accuracy" in metrics[-1]
  acc = re.search(r"accuracy ([0-9.]+) \((\d+) examples\)", outs[2])
  assert acc and int(acc.group(2)) == 8
  # predict on the folder's test images reproduces the run's own target test accuracy
  assert float(acc.group(1)) == pytest.approx(metrics[-1]["target_test_accuracy"], abs=1e-6)


def test_a_csv_text_target_through_the_text_pipeline(tmp_path):
  """csv:DIR as the target of a shipped text config (wic_minilm), fields text + text_pair."""
  from merlin_jax.config_base import load_config
  from merlin_jax.data import pipeline
  from tests.helpers import write_random_hf_bert
  rows = [{"text": f"sentence {i}", "text_pair": f"other {i % 5}", "label": ["no", "yes"][i % 2]}
          for i in range(40)]
  os.makedirs(tmp_path / "t")
  write_text_table(str(tmp_path / "t" / "train.csv"), "csv", rows)
  write_text_table(str(tmp_path / "t" / "test.csv"), "csv", rows[:10])
  c = load_config("wic_minilm:finetune,local")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.target.name = f"csv:{tmp_path / 't'}"
  c.data.target.train_split, c.data.target.test_split = "train", "test"
  c.data.text.fields = ("text", "text_pair")
  c.data.text.tokenizer_dir = write_random_hf_bert(tmp_path / "bert")
  c.data.target.num_train, c.data.target.num_val = 20, 10
  d = pipeline.load_transfer_data(c.data, seed=0, need_source=False)
  assert d.target_class_names == ("no", "yes")
  assert d.target_train["inputs"]["input_ids"].shape[0] == 20
  assert sum(int(b["mask"].sum()) for b in d.eval_batches("target_test", 8)) == 10


def test_a_missing_config_names_the_shipped_ones(tmp_path, capfd, monkeypatch):
  from tests.helpers import assert_one_line_error, run_cli
  monkeypatch.chdir(tmp_path)   # outside the repo: configs/digits.py is not here
  code, err = run_cli([], capfd, config="configs/digits.py:local", workdir=str(tmp_path / "w"))
  line = assert_one_line_error(code, err, "cannot load --config=configs/digits.py:local")
  assert "give a shipped config by name (digits, " in line
  assert not (tmp_path / "w").exists()
