"""TFDS access: builders, splits and one-line DataErrors (TF imported lazily: it takes seconds).

Every dataset is read through TFDS (`tfds.builder(name, data_dir)`): our offline builders
(`merlin_jax.data.builders`) and the catalog sets of the paper's experiments alike. Nothing
here downloads: a dataset that is not prepared raises a DataError naming the command.

File formats: tfrecord (TFDS's default; read sequentially with tf.data) and array_record
(random access by index: `data_source`, which the streamed source reads so that it resumes
in O(1) on any process count, see sources.py). A dataset stored as array_record only is
still read in order by `as_dataset` (through its data source).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Callable

import numpy as np

from merlin_jax.errors import ConfigError, DataError


# The environment (re-exported: callers use tfds_io.import_tfds() etc.).
from merlin_jax.data.tfds_env import (  # noqa: E402,F401
    default_data_dir, first_line, import_tf, import_tfds)


def base_name(name: str) -> str:
  """'printed_digits/tiny:1.0.0' -> 'printed_digits'."""
  return name.split("/")[0].split(":")[0]


def not_prepared(name: str, data_dir: str) -> DataError:
  """The one-line error for a dataset that is not prepared in data_dir, naming the fix."""
  return DataError(f"dataset {name!r} is not prepared in "
                   f"{data_dir or '~/tensorflow_datasets'}: {prepare_hint(name, data_dir)}")


def prepare_hint(name: str, data_dir: str) -> str:
  """The command that prepares dataset `name` (for DataError messages)."""
  from merlin_jax.data import builders
  dd = data_dir or "~/tensorflow_datasets"
  if base_name(name) in builders.MANUAL:
    return (f"run `python -m merlin_jax.data.prepare {name} --manual_dir=DIR "
            f"--data_dir={dd}` once")
  return (f"run `python -m merlin_jax.data.prepare {name} --data_dir={dd}` once (datasets "
          f"with manual downloads, e.g. imagenet2012, also need --manual_dir; see the "
          f"config's docstring)")


def get_builder(name: str, data_dir: str = ""):
  """tfds.builder(name) and, for our pip-only builders, build on first use.

  Never downloads: catalog and manual-dir datasets must have been prepared beforehand
  (reading them raises DataError naming the command).
  """
  tfds = import_tfds()
  from merlin_jax.data import builders
  from merlin_jax.data import own_data
  if own_data.is_own(name):   # folder:PATH, csv:PATH, jsonl:PATH: local files
    return own_data.get_builder(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # DatasetNotFoundError, unknown builder config, ...
    raise DataError(f"dataset {name!r}: not a TFDS catalog name nor a merlin_jax builder "
                    f"({first_line(e)})") from None
  if base_name(name) in builders.PIP_ONLY:
    if not builder.is_prepared():
      logging.info("Building %s in %s (first use; nothing is downloaded).", name,
                   builder.data_dir)
    try:
      builder.download_and_prepare()
    except Exception:  # pylint: disable=broad-except
      # Several processes building into one shared data dir: TFDS writes to a temporary
      # folder and renames it, so the loser of the race finds the dataset prepared.
      builder = tfds.builder(name, data_dir=data_dir or None)
      if not builder.is_prepared():
        raise
  return builder


def as_dataset(builder, name: str, data_dir: str, split: str, **kwargs):
  """builder.as_dataset with one-line DataErrors for unprepared data / unknown splits.

  A dataset stored as array_record only (TFDS cannot read it with tf.data) is read in record
  order through its data source; `shuffle_files` and `read_config` then do not apply.
  """
  if not tf_data_readable(builder):
    return ordered_records(data_source(builder, name, data_dir, split)).map(
        example_parser(builder, kwargs.get("decoders")))
  renamed = kwargs.get("decoders")
  if isinstance(renamed, _Renamed):   # other feature names: examples get 'image' / 'label'
    kwargs["decoders"] = renamed.decoding
  try:
    ds = builder.as_dataset(split=split, **kwargs)
    if isinstance(renamed, _Renamed):
      ds = ds.map(lambda ex: {renamed.names.get(k, k): v for k, v in ex.items()})
    return ds
  except AssertionError:  # TFDS: "could not find data in DIR"
    raise not_prepared(name, data_dir) from None
  except (KeyError, ValueError) as e:
    raise DataError(f"dataset {name!r}: cannot read split {split!r} ({first_line(e)})"
                    ) from None


ARRAY_RECORD = "array_record"


def file_formats(builder) -> set[str]:
  """The file formats `builder`'s dataset is stored in ({'tfrecord'}, {'array_record'}, both
  after `python -m merlin_jax.data.prepare NAME --file_format=array_record`)."""
  try:
    return {f.value for f in builder.info.available_file_formats()}
  except Exception:  # pylint: disable=broad-except  (no file format recorded: the default)
    return {"tfrecord"}


def random_access(builder) -> bool:
  """`builder`'s dataset can be read by record index (it is stored as array_record)."""
  return ARRAY_RECORD in file_formats(builder)


def tf_data_readable(builder) -> bool:
  """builder.as_dataset can read it: its main file format is not array_record."""
  fmt = builder.info.file_format
  return fmt is None or fmt.value != ARRAY_RECORD


def data_source(builder, name: str, data_dir: str, split: str):
  """The serialized tf.Examples of `split` by index (`len`, `__getitems__(indices)` -> list of
  bytes), from its array_record files; one-line DataErrors like as_dataset."""
  tfds = import_tfds()
  info = builder.info
  previous = info.file_format
  try:
    return builder.as_data_source(split, file_format=ARRAY_RECORD,
                                  deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except (NotImplementedError, FileNotFoundError, AssertionError) as e:
    raise DataError(f"dataset {name!r} is not prepared as {ARRAY_RECORD} in "
                    f"{data_dir or '~/tensorflow_datasets'} ({first_line(e)}): run `python -m "
                    f"merlin_jax.data.prepare {name} --file_format={ARRAY_RECORD} "
                    f"--data_dir={data_dir or '~/tensorflow_datasets'}` once") from None
  except (KeyError, ValueError) as e:
    raise DataError(f"dataset {name!r}: cannot read split {split!r} ({first_line(e)})"
                    ) from None
  finally:
    # as_data_source switches the builder's info to array_record; as_dataset still reads
    # the dataset's main format (the data source has already resolved its files).
    if previous is not None and info.file_format != previous:
      info.set_file_format(previous, override=True, override_if_initialized=True)


def convert_format(builder, file_format: str) -> None:
  """Copies every split of the prepared `builder`, record for record and in order, into
  `file_format` files beside its own, then records that format in its dataset_info.json
  (`python -m merlin_jax.data.prepare NAME --file_format=...`; what `tfds convert_format`
  does in place, without its Apache Beam dependency)."""
  import_tfds()
  from etils import epath
  from tensorflow_datasets.core import file_adapters
  info = builder.info
  src_adapter = file_adapters.ADAPTER_FOR_FORMAT[info.file_format]
  out_format = file_adapters.FileFormat.from_value(file_format)
  out_adapter = file_adapters.ADAPTER_FOR_FORMAT[out_format]
  if not src_adapter.SUPPORTS_TF_DATA:
    raise DataError(f"dataset {builder.name!r} is stored as {info.file_format.value}: "
                    f"rebuild it with --file_format={file_format} instead")
  for split in info.splits.values():
    template = split.filename_template.replace(filetype_suffix=out_format.file_suffix)
    for shard, in_path in enumerate(split.filepaths):
      out_path = epath.Path(template.sharded_filepath(shard_index=shard,
                                                      num_shards=split.num_shards))
      tmp = out_path.parent / f"{out_path.name}.incomplete"
      records = src_adapter.make_tf_data(in_path).as_numpy_iterator()
      out_adapter.write_examples(tmp, enumerate(records))
      tmp.replace(out_path)   # a killed conversion leaves no half-written shard
  info.add_alternative_file_format(out_format)
  info.write_dataset_info_json(builder.data_dir)


def example_parser(builder, decoders=None) -> Callable:
  """serialized tf.Example (tf.string scalar) -> the example as builder.as_dataset(
  decoders=decoders) yields it (decoders: None, tfds.decode.PartialDecoding, skip_decoding())."""
  tfds = import_tfds()
  names = {}
  if isinstance(decoders, _Renamed):
    decoders, names = decoders.decoding, decoders.names
  features = builder.info.features
  if isinstance(decoders, tfds.decode.PartialDecoding):
    features, decoders = decoders.extract_features(features), decoders.decoders

  def parse(serialized):
    ex = features.deserialize_example(serialized, decoders=decoders)
    return {names.get(k, k): v for k, v in ex.items()} if names else ex

  return parse


def ordered_records(records, chunk: int = 256):
  """A data source's records [0, N) in order as a tf.data.Dataset of tf.string scalars."""
  tf = import_tf()
  n = len(records)

  def read(lo):
    lo = int(lo)
    return np.array(records.__getitems__(list(range(lo, min(lo + chunk, n)))), dtype=object)

  def read_chunk(lo):
    out = tf.numpy_function(read, [lo], tf.string, stateful=False)
    out.set_shape([None])
    return out

  ds = tf.data.Dataset.range(0, n, chunk)
  return ds.map(read_chunk, num_parallel_calls=2, deterministic=True).unbatch()


def num_examples(builder, split: str) -> int | None:
  """Examples in `split` from the dataset info (None when unknown, e.g. mock data)."""
  try:
    return int(builder.info.splits[split].num_examples) or None
  except Exception:  # pylint: disable=broad-except  (unknown split info, e.g. mock data)
    return None


# The image and label feature names per dataset (base name), when not 'image' / 'label':
# config.data.{source,target}.{image_key,label_key}, set by the loaders (image.py).
_FEATURE_KEYS: dict[str, tuple[str, str]] = {}


def use_feature_keys(name: str, image_key: str = "image", label_key: str = "label") -> None:
  """Read dataset `name`'s images and labels from these features (any TFDS dataset)."""
  _FEATURE_KEYS[base_name(name)] = (image_key, label_key)


def feature_keys(builder, kinds=("image", "label")) -> tuple[str, str]:
  """(image feature, label feature) of `builder`'s dataset; DataError if it lacks one of
  `kinds` (text datasets have no image)."""
  keys = dict(zip(("image", "label"), _FEATURE_KEYS.get(builder.name, ("image", "label"))))
  features = builder.info.features
  for kind in kinds:
    if keys[kind] not in features:
      raise DataError(f"dataset {builder.name!r} has no {kind} feature {keys[kind]!r} (it "
                      f"has {sorted(features.keys())}); set data.source.{kind}_key / "
                      f"data.target.{kind}_key")
  return keys["image"], keys["label"]


def check_num_classes(builder, name: str, expected: int, key: str):
  """ConfigError(key) unless the dataset's label feature has `expected` classes."""
  label_key = feature_keys(builder, kinds=("label",))[1]
  try:
    actual = builder.info.features[label_key].num_classes
  except Exception:  # pylint: disable=broad-except
    raise DataError(f"dataset {name!r}: its label feature {label_key!r} is not a ClassLabel"
                    ) from None
  if actual != expected:
    raise ConfigError(key, f"{expected}, but dataset {name!r} has {actual} classes")


def class_names(builder) -> tuple:
  """The 'label' feature's class names (() when it has none)."""
  try:
    return tuple(str(n) for n in
                 builder.info.features[feature_keys(builder, kinds=("label",))[1]].names)
  except Exception:  # pylint: disable=broad-except
    return ()


def skip_decoding(builder=None):
  """Read only the image (still encoded) and the label, renamed 'image' and 'label': other
  features (bboxes, captions) are never parsed, and images are decoded after filtering /
  skipping. `builder`: for datasets whose features have other names (use_feature_keys)."""
  tfds = import_tfds()
  image_key, label_key = ("image", "label") if builder is None else feature_keys(builder)
  decoding = tfds.decode.PartialDecoding({image_key: True, label_key: True},
                                         decoders={image_key: tfds.decode.SkipDecoding()})
  if (image_key, label_key) == ("image", "label"):
    return decoding
  return _Renamed(decoding, {image_key: "image", label_key: "label"})


class _Renamed:
  """Marks decoders whose examples `as_dataset` renames to 'image' / 'label'."""

  def __init__(self, decoding, names):
    self.decoding, self.names = decoding, names


def image_feature(builder):
  """The TFDS feature of `builder`'s images (decode_example of an encoded image)."""
  return builder.info.features[feature_keys(builder)[0]]


def decode_examples(ds, builder, image_fn: Callable):
  """Examples read with skip_decoding() -> (image_fn(decoded image), label int32), in order."""
  tf = import_tf()
  feature = image_feature(builder)
  return ds.map(lambda ex: (image_fn(feature.decode_example(ex["image"])),
                            tf.cast(ex["label"], tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE)


def load_labels(builder, name: str, data_dir: str, split: str) -> np.ndarray:
  """All labels of `split` in record order (images are not decoded). -> int64 [N]."""
  tfds = import_tfds()
  ds = as_dataset(builder, name, data_dir, split, shuffle_files=False,
                  decoders=skip_decoding(builder))
  ds = ds.map(lambda ex: ex["label"]).batch(65536)
  parts = [np.asarray(x) for x in tfds.as_numpy(ds)]
  return np.concatenate(parts).astype(np.int64) if parts else np.zeros([0], np.int64)


def load_arrays(builder, name: str, data_dir: str, split: str, image_fn: Callable,
                indices: np.ndarray | None = None):
  """Decode + preprocess `split` (or only the records at sorted `indices`) into numpy.

  -> (images float32 [N, S, S, C], labels int32 [N]) in record order.
  """
  tf, tfds = import_tf(), import_tfds()
  ds = as_dataset(builder, name, data_dir, split, shuffle_files=False,
                  decoders=skip_decoding(builder))
  if indices is not None:
    total = int(indices.max()) + 1 if len(indices) else 0
    keep = np.zeros([total], bool)
    keep[indices] = True
    keep = tf.constant(keep)
    keep_fn = lambda i, ex: tf.logical_and(i < total, tf.gather(keep, tf.minimum(i, total - 1)))
    ds = ds.enumerate().filter(keep_fn)
    ds = ds.map(lambda i, ex: ex)
  ds = decode_examples(ds, builder, image_fn).batch(1024).prefetch(2)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):
    images.append(x)
    labels.append(y)
  if not images:
    raise DataError(f"dataset {name!r} split {split!r} is empty")
  return np.concatenate(images), np.concatenate(labels)
