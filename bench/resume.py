"""Time to the first source batch when a streamed source resumes at step k.

  python bench/resume.py [--num_examples=30000] [--steps=0,1000,10000,100000]
      [--old_max_step=10000] [--batch_size=256] [--data_dir=/tmp/merlin_resume_bench]

Builds (once, into --data_dir) a synthetic TFDS image set of --num_examples random RGB
images (PNG, 32x32, 10 classes) as tfrecord, then converts it to array_record beside it
(same records, same order) with `tfds_io.convert_format`, what `python -m
merlin_jax.data.prepare NAME --file_format=array_record` runs. Then, for each start step k,
in one process, alternating the two paths:

  * skip (tfrecord, `sources.StreamingSource`): repeat + shuffle(--shuffle_buffer) +
    skip(k * B / P) encoded records, the pipeline of every tfrecord-streamed source;
  * index (array_record, `sources.RandomAccessSource`): batch k read by index from the
    epoch permutations, the pipeline of every array_record-streamed source,

it times building the source and its pipeline ("open") and getting the first batch
(inception crop to --image_size, as the large pairs do), and for k = 0 the steady rate of
--rate_batches more batches. Skip-path resumes beyond --old_max_step are not run (their
cost is linear in k: see the rows below it). Prints a markdown table.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/merlin_resume_bench",
                                "Where the synthetic dataset is built (reused if there).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 30_000, "Images in the synthetic set.")
_STEPS = flags.DEFINE_list("steps", ["0", "1000", "10000", "100000"], "Start steps to time.")
_OLD_MAX_STEP = flags.DEFINE_integer("old_max_step", 10_000,
                                     "Largest start step timed on the skip path.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch size B.")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", 1,
                                      "P: time process 0's share of P processes.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Model image size (inception crop).")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 10_000,
                                       "Skip path's shuffle buffer (the configs' default).")
_RATE_BATCHES = flags.DEFINE_integer("rate_batches", 50,
                                     "Batches timed for the steady rate (at k = 0).")

NAME = "resume_bench_images"


def build(data_dir: str, n: int):
  """The synthetic set in data_dir, as tfrecord + array_record; -> its builder."""
  from merlin_jax.data import tfds_io
  tfds = tfds_io.import_tfds()
  try:
    builder = tfds.builder(NAME, data_dir=data_dir)
    if builder.is_prepared() and builder.info.splits["train"].num_examples == n:
      if not tfds_io.random_access(builder):
        tfds_io.convert_format(builder, "array_record")
      return tfds.builder(NAME, data_dir=data_dir)
  except Exception:  # pylint: disable=broad-except  (not built yet)
    pass
  rng = np.random.default_rng(0)

  def examples():
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                "label": int(rng.integers(10))}

  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(32, 32, 3)),
      "label": tfds.features.ClassLabel(num_classes=10)})
  t = time.perf_counter()
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": examples()}, file_format="tfrecord")
  print(f"built {n} examples as tfrecord in {time.perf_counter() - t:.0f} s")
  builder = tfds.builder(NAME, data_dir=data_dir)
  t = time.perf_counter()
  tfds_io.convert_format(builder, "array_record")
  print(f"converted to array_record in {time.perf_counter() - t:.0f} s")
  return tfds.builder(NAME, data_dir=data_dir)


def make_source(builder, data_dir, path):
  from merlin_jax.data.sources import RandomAccessSource, StreamingSource
  kwargs = dict(image_size=_IMAGE_SIZE.value, channels=3, augment="inception", prefetch=2,
                process_index=0, process_count=_PROCESS_COUNT.value)
  if path == "index":
    return RandomAccessSource(builder, NAME, data_dir, "train", 0, **kwargs)
  return StreamingSource(builder, NAME, data_dir, "train", 0,
                         shuffle_buffer=_SHUFFLE_BUFFER.value, **kwargs)


def time_resume(builder, data_dir, path, step, rate_batches):
  """-> (open s, first batch s, steady batches/s or None)."""
  t0 = time.perf_counter()
  it = make_source(builder, data_dir, path).batches(step, _BATCH_SIZE.value)
  t1 = time.perf_counter()
  np.asarray(next(it)["inputs"]).sum()
  t2 = time.perf_counter()
  rate = None
  if rate_batches:
    for _ in range(rate_batches):
      b = next(it)
    np.asarray(b["inputs"]).sum()
    rate = rate_batches / (time.perf_counter() - t2)
  return t1 - t0, t2 - t1, rate


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.ERROR)   # the skip path warns on every resume
  data_dir = _DATA_DIR.value
  builder = build(data_dir, _NUM_EXAMPLES.value)
  steps = [int(s) for s in _STEPS.value]
  b, p = _BATCH_SIZE.value, _PROCESS_COUNT.value
  rows = []
  for step in steps:
    for path in ("skip", "index"):
      if path == "skip" and step > _OLD_MAX_STEP.value:
        rows.append((path, step, None))
        continue
      result = time_resume(builder, data_dir, path, step, _RATE_BATCHES.value if step == 0
                           else 0)
      print(f"{path:5s} step {step:>7d}: open {result[0]:.2f} s, first batch "
            f"{result[1]:.2f} s", flush=True)
      rows.append((path, step, result))
  print(f"\n{_NUM_EXAMPLES.value:,} images 32x32 PNG, B = {b}, P = {p} (process 0's "
        f"{b // p} rows), inception crop to {_IMAGE_SIZE.value}, shuffle buffer "
        f"{_SHUFFLE_BUFFER.value:,} (skip path)\n")
  print("| path | start step | records skipped | open s | first batch s | open + first s "
        "| steady batches/s |")
  print("|---|---|---|---|---|---|---|")
  for path, step, result in rows:
    label = ("skip (tfrecord, StreamingSource)" if path == "skip"
             else "index (array_record, RandomAccessSource)")
    skipped = f"{step * b // p:,}" if path == "skip" else "0"
    if result is None:
      print(f"| {label} | {step:,} | {skipped} | not run | not run | not run | |")
      continue
    o, f, rate = result
    print(f"| {label} | {step:,} | {skipped} | {o:.2f} | {f:.2f} | {o + f:.2f} | "
          f"{'' if rate is None else f'{rate:.1f}'} |")


if __name__ == "__main__":
  app.run(main)
