"""Every preparation command the documentation and the error messages give runs (issue 29).

The commands are read from README.md, the config docstrings, launch/ and
merlin_jax/data/prepare.py, and from the messages of an unprepared dataset; each is run with
`prepare.prepare` on tiny data: own data (folder:/csv:/jsonl:) for real; TFDS catalog
datasets and the offline builders with `download_and_prepare` recorded instead of run (the
offline builders' real preparation from tiny manual dirs: tests/test_data.py), so a name,
a flag or a config that is not what the command says fails here. `tfds build` (whose CLI
needs apache_beam, not installed) must not come back into the docs.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import types

import pytest

from merlin_jax.data import builders, prepare, sources, tfds_io
from tests.helpers import write_image_folder, write_text_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = re.compile(r"(?:python -m merlin_jax\.data\.prepare|merlin-prepare) +([^`\n|)]*)")
FLAGS = {"--manual_dir", "--data_dir", "--file_format"}


TOY_BUILDER = '''"""A toy dataset of the user's own: no __init__.py beside it."""
import numpy as np
import tensorflow_datasets as tfds


class Builder(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(names=["a", "b"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(20), "test": self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((8, 8, 1), 10 * i, np.uint8), "label": i % 2}
'''


def write_toy_builder(root, name="toy_src"):
  """root/<name>/<name>_dataset_builder.py, as `tfds new` lays one out (no package)."""
  os.makedirs(os.path.join(root, name), exist_ok=True)
  path = os.path.join(root, name, f"{name}_dataset_builder.py")
  with open(path, "w") as f:
    f.write(TOY_BUILDER)
  with open(os.path.join(root, name, "README.md"), "w") as f:
    f.write("A toy dataset.\n")
  return path


def doc_files():
  return ([os.path.join(ROOT, "README.md"), os.path.join(ROOT, "merlin_jax/data/prepare.py"),
           os.path.join(ROOT, "merlin_jax/data/own_data.py")]
          + sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
          + sorted(glob.glob(os.path.join(ROOT, "launch", "*"))))


def commands_in(text):
  """The argument strings of every prepare command in `text` (continuations joined)."""
  text = re.sub(r"\\\n\s*", " ", text)
  return [m.group(1).split(" #")[0].split("&&")[0].strip() for m in COMMAND.finditer(text)]


def error_message_commands(tmp):
  """The commands the not-prepared messages give (catalog, manual-dir, array_record)."""
  msgs = [tfds_io.prepare_hint("glue/mrpc", tmp), tfds_io.prepare_hint("usps", tmp),
          sources.StreamingSource._array_record_hint(   # pylint: disable=protected-access
              types.SimpleNamespace(name="food101", data_dir=tmp))]
  return [c for m in msgs for c in commands_in(m)]


def documented():
  out = []
  for path in doc_files():
    if os.path.isfile(path):
      out += [(os.path.relpath(path, ROOT), c) for c in commands_in(open(path).read())]
  return out


def test_the_docs_give_the_prepare_command_not_tfds_build():
  cmds = documented()
  names = {c.split()[0] for _, c in cmds}
  # the paths the issue names: catalog pairs with manual dirs, own data, GLUE
  assert {"imagenet2012", "caltech_birds2011", "glue/mrpc", "usps", "folder:/data/xray",
          "path/to/my_ds/my_ds_dataset_builder.py"} <= names
  for path in doc_files() + glob.glob(os.path.join(ROOT, "docs", "*.md")) + glob.glob(
      os.path.join(ROOT, "notebooks", "*.ipynb")) + glob.glob(os.path.join(ROOT, "merlin_jax",
                                                                              "**", "*.py"),
                                                                 recursive=True):
    assert not re.search(r"tfds build [a-z$]", open(path).read()), path


@pytest.fixture
def recorded(monkeypatch):
  """download_and_prepare of catalog / offline builders recorded, not run; the offline
  builders' manual-file checks pass (their real runs: tests/test_data.py)."""
  tfds = tfds_io.import_tfds()
  calls = []
  real = tfds.core.DatasetBuilder.download_and_prepare

  def record(self, download_config=None, **kwargs):
    if isinstance(self, tfds.dataset_builders.AdhocBuilder) or self.name == "toy_src":
      calls.append({"name": self.name})   # own data, own builder: really built
      return real(self, download_config=download_config, **kwargs)
    calls.append({"name": self.name, "config": self.builder_config and self.builder_config.name,
                  "manual_dir": download_config and download_config.manual_dir,
                  "file_format": self.info.file_format.value, "data_dir": self.data_dir})

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", record)
  for module in set(builders.MANUAL.values()):
    monkeypatch.setattr(module, "find_manual_files", lambda *a, **k: {})
  return calls


def run_documented(args, tmp_path, calls):
  """prepare.prepare for one documented argument string, placeholders made real."""
  if args.split()[0].isupper():
    return None   # a placeholder (NAME, SOURCE): nothing to run
  tokens = shlex.split(args)
  name, flags = tokens[0], dict(t.split("=", 1) for t in tokens[1:])
  assert set(flags) <= FLAGS, (args, "unknown flag")
  data_dir = str(tmp_path / "tfds")
  manual = None
  if "--manual_dir" in flags:
    manual = str(tmp_path / "manual")
    os.makedirs(manual, exist_ok=True)
  kind = name.split(":")[0]
  if kind == "folder":
    write_image_folder(str(tmp_path / "imgs"))
    name = f"folder:{tmp_path / 'imgs'}"
  elif kind in ("csv", "jsonl"):
    os.makedirs(tmp_path / "table", exist_ok=True)
    write_text_table(str(tmp_path / "table" / f"train.{kind}"), kind,
                     [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    name = f"{kind}:{tmp_path / 'table'}"
  own_builder = name.endswith(".py")
  if own_builder:
    name = write_toy_builder(str(tmp_path / "src"))
  n = len(calls)
  path = prepare.prepare(name, manual, data_dir, flags.get("--file_format"))
  if own_builder:
    calls.pop()   # it was built for real: TFDS finds it by name in the data dir
    b = tfds_io.get_builder("toy_src", data_dir)
    assert b.info.splits["train"].num_examples == 20, args
    return path
  if kind in ("folder", "csv", "jsonl"):
    assert os.path.isfile(os.path.join(path, "dataset_info.json")), args
    del calls[n:]
    return path
  assert len(calls) == n + 1, args   # built by TFDS's download_and_prepare
  call = calls[-1]
  assert call["name"] == tfds_io.base_name(name), args
  assert call["manual_dir"] == manual, args
  assert call["file_format"] == flags.get("--file_format", "tfrecord"), args
  return path


def test_every_documented_prepare_command_runs(tmp_path, recorded):
  cmds = documented() + [("error message", c) for c in error_message_commands(str(tmp_path))]
  ran = 0
  for i, (where, args) in enumerate(cmds):
    ran += run_documented(args, tmp_path / str(i), recorded) is not None
  assert ran >= 15, cmds


def test_the_prepare_cli_fails_in_one_line(tmp_path):
  """The command itself on a bad name: exit 1, one line (its success path runs in
  tests/test_own_data.py's README block)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  cmd = [sys.executable, "-m", "merlin_jax.data.prepare"]
  bad = subprocess.run(cmd + ["no_such_dataset_xyz", f"--data_dir={tmp_path / 'd'}"],
                       env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1].startswith("error: dataset 'no_such_dataset_xyz'")
