"""A researcher's own data as a dataset: a folder of images, or a CSV / JSONL of texts.

  --config.data.target.name=folder:/data/xray     # /data/xray/train/<class>/*.png [test/...]
  --config.data.target.name=csv:/data/reviews     # /data/reviews/train.csv [test.csv]
  --config.data.target.name=jsonl:/data/pairs.jsonl   # one file: the 'train' split only

(`folder:` also works as data.source.name.) Each such name is prepared once into TFDS format
in the data dir (`config.data.data_dir`), by `python -m merlin_jax.data.prepare NAME` or on
first use (local files only: nothing is downloaded); from then on it is read like any other
TFDS dataset. A folder is listed and decoded by TFDS's own `tfds.folder_dataset.ImageFolder`
(splits = the sub-folders, classes = their sub-folders' names, sorted; .png/.jpg/.jpeg), and
written with `tfds.dataset_builders.store_as_tfds_dataset` as features {'image', 'label'}.
A text table becomes {'text', ['text_pair'], 'label'}: set `data.text.fields` to
('text',) or ('text', 'text_pair'). Labels are class names (strings or integers), sorted.

The prepared dataset's name is `own_<kind>_<folder name>_<hash of the absolute path>`; it is
re-prepared when the per-split example counts of the files no longer match.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re

from merlin_jax.data import tfds_env   # not tfds_io: tfds_io dispatches folder:/csv:/jsonl: here
from merlin_jax.errors import DataError

KINDS = ("folder", "csv", "jsonl")
_VERSION = "1.0.0"
_TEXT_COLUMNS = ("text", "text_pair", "label")


def is_own(name: str) -> bool:
  """`name` is one of `folder:PATH`, `csv:PATH`, `jsonl:PATH`."""
  return isinstance(name, str) and name.split(":", 1)[0] in KINDS and ":" in name


def parse(name: str) -> tuple[str, str]:
  """'folder:~/x' -> ('folder', '/abs/x'); DataError if the path does not exist."""
  kind, path = name.split(":", 1)
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise DataError(f"dataset {name!r}: {path} does not exist")
  return kind, path


def tfds_name(name: str) -> str:
  """The TFDS name the data of `name` is stored under (module docstring)."""
  kind, path = parse(name)
  stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
  stem = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_") or "data"
  digest = hashlib.sha256(path.encode()).hexdigest()[:8]
  return f"own_{kind}_{stem}_{digest}"


# --- reading the user's files ------------------------------------------------------------


def _image_folder(path: str, channels: int | None = None):
  tfds = tfds_env.import_tfds()
  shape = None if channels is None else (None, None, channels)
  try:
    return tfds.folder_dataset.ImageFolder(path, shape=shape)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"folder {path}: cannot list it as <split>/<class>/<image> "
                    f"({tfds_env.first_line(e)})") from None


def _folder_counts(path: str) -> dict[str, int]:
  builder = _image_folder(path)
  return {s: int(i.num_examples) for s, i in builder.info.splits.items()}


def _channels(builder) -> int:
  """1 when the first images are all grayscale, else 3 (decoded as RGB)."""
  from PIL import Image
  examples = builder._split_examples.values()  # pylint: disable=protected-access
  files = [ex.image_path for exs in examples for ex in exs[:16]]
  for f in files:
    with Image.open(f) as im:
      if im.mode not in ("1", "L", "LA", "I", "I;16"):
        return 3
  return 1


def _table_rows(path: str) -> list[dict]:
  """Rows of a .csv (with a header) or .jsonl file as dicts of strings."""
  rows = []
  with open(path, newline="", encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      for i, line in enumerate(f):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i + 1}: not a JSON object ({e})") from None
    else:
      rows = list(csv.DictReader(f))
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or "text" not in row or "label" not in row:
      raise DataError(f"{path}: row {i + 1} lacks a 'text' or 'label' column (columns: "
                      f"text[, text_pair], label)")
  return rows


def _table_files(kind: str, path: str) -> dict[str, str]:
  """split -> file: a single file is 'train'; a folder holds <split>.<kind> files."""
  if os.path.isfile(path):
    return {"train": path}
  files = {os.path.splitext(f)[0]: os.path.join(path, f) for f in sorted(os.listdir(path))
           if f.endswith(f".{kind}")}
  if "train" not in files:
    raise DataError(f"{kind}:{path}: no train.{kind} in it (one file per split: "
                    f"train.{kind}[, test.{kind}])")
  return files


def _sorted_labels(values) -> list[str]:
  values = sorted({str(v) for v in values})
  if all(re.fullmatch(r"-?\d+", v) for v in values):
    values.sort(key=int)
  return values


# --- preparing ---------------------------------------------------------------------------


def _counts(kind: str, path: str) -> dict[str, int]:
  if kind == "folder":
    return _folder_counts(path)
  return {s: len(_table_rows(f)) for s, f in _table_files(kind, path).items()}


def _prepared(name: str, data_dir: str):
  """The prepared builder of `name` in data_dir, or None (absent, or stale counts)."""
  tfds = tfds_env.import_tfds()
  root = os.path.join(os.path.expanduser(data_dir or tfds_env.default_data_dir()),
                      tfds_name(name), _VERSION)
  if not tfds_env.import_tf().io.gfile.exists(os.path.join(root, "dataset_info.json")):
    return None
  builder = tfds.builder_from_directory(root)
  kind, path = parse(name)
  stored = {s: int(i.num_examples) for s, i in builder.info.splits.items()}
  if stored != _counts(kind, path):
    logging.info("%s changed since it was prepared (%s): preparing it again", name, stored)
    return None
  return builder


def prepare(name: str, data_dir: str = "", file_format: str | None = None):
  """Writes `name`'s files as a TFDS dataset in data_dir (module docstring); -> builder."""
  tfds = tfds_env.import_tfds()
  kind, path = parse(name)
  dd = os.path.expanduser(data_dir or tfds_env.default_data_dir())
  if kind == "folder":
    probe = _image_folder(path)
    if "train" not in probe.info.splits:
      raise DataError(f"folder {path} has no train/ sub-folder (layout: train/<class>/*.png, "
                      "optional test/<class>/*.png)")
    channels = _channels(probe)
    builder = _image_folder(path, channels)   # TFDS decodes every image to `channels`
    names = builder.info.features["label"].names
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, channels)),
        "label": tfds.features.ClassLabel(names=names)})
    splits = {}
    for split in builder.info.splits:
      ds = builder.as_dataset(split=split, shuffle_files=False)
      splits[split] = ((i, {"image": ex["image"], "label": ex["label"]})   # (key, example)
                       for i, ex in enumerate(tfds.as_numpy(ds)))
  else:
    files = _table_files(kind, path)
    rows = {s: _table_rows(f) for s, f in files.items()}
    names = _sorted_labels(r["label"] for rs in rows.values() for r in rs)
    pair = all("text_pair" in r for rs in rows.values() for r in rs)
    spec = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=names)}
    if pair:
      spec["text_pair"] = tfds.features.Text()
    features = tfds.features.FeaturesDict(spec)
    splits = {s: [(i, {k: str(r[k]) for k in spec}) for i, r in enumerate(rs)]
              for s, rs in rows.items()}
  stale = os.path.join(dd, tfds_name(name), _VERSION)
  gfile = tfds_env.import_tf().io.gfile
  if gfile.exists(os.path.join(stale, "dataset_info.json")):
    again = _prepared(name, data_dir)
    if again is not None:   # prepared meanwhile (another process), and current
      return again
    gfile.rmtree(stale)     # the files changed since: TFDS will not overwrite
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=tfds_name(name), version=_VERSION, features=features, split_datasets=splits,
      data_dir=dd, file_format=file_format, disable_shuffling=True,
      description=f"prepared by merlin_jax from {name}")
  return tfds.builder_from_directory(builder.data_dir)


def get_builder(name: str, data_dir: str = ""):
  """The prepared builder of `name`, preparing it first if needed (local files only)."""
  builder = _prepared(name, data_dir)
  if builder is None:
    logging.info("Preparing %s into TFDS format in %s (once; local files only).", name,
                 data_dir or tfds_env.default_data_dir())
    try:
      builder = prepare(name, data_dir)
    except DataError:
      raise
    except Exception:  # pylint: disable=broad-except
      # Several processes preparing into one shared data dir: the loser of TFDS's rename
      # finds the dataset prepared.
      builder = _prepared(name, data_dir)
      if builder is None:
        raise
  return builder
