"""Input-pipeline throughput vs. what the train step consumes.

  python bench/input_pipeline.py [--steps=200] [--data_dir=/tmp/tfds] [--skip_step]

Measures source examples/s of
  1. the digits default (printed_digits, in memory, augment none and light),
  2. a streaming tf.data pipeline over real TFRecords (printed_digits, in_memory=False),
  3. the ImageNet-style streaming pipeline (224x224x3, inception crop) under
     tfds.testing.mock_data (random JPEG-free images of random sizes: decode+crop cost only),
and the examples/s the training program's MeRLin step consumes on the digits default
(`train.make_train_step` with configs/digits.py's model, inner loop and optimizer), then
prints the ratio. Goal: pipeline >= 5x consumption. Builds printed_digits into --data_dir on
first use (about a minute).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

_STEPS = flags.DEFINE_integer("steps", 200, "Batches timed per pipeline.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Source batch size.")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/merlin_tfds",
                                "TFDS data dir (printed_digits is built there on first use).")
_SKIP_STEP = flags.DEFINE_bool("skip_step", False, "Do not time the train step's consumption.")


def _rate(it, steps, batch_size, warmup=5):
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(steps):
    b = next(it)
  np.asarray(b["inputs"]).sum()
  return steps * batch_size / (time.perf_counter() - t)


def digits_config(data_dir):
  from merlin_jax.config_base import base_config
  c = base_config()
  c.data.data_dir = data_dir
  return c


def bench_in_memory(data_dir, steps, bs, augment):
  from merlin_jax import data
  c = digits_config(data_dir).data
  c.source.augment = augment
  d = data.load_transfer_data(c, 0)
  return _rate(d.source.batches(0, bs), steps, bs)


def bench_streaming_digits(data_dir, steps, bs):
  from merlin_jax import data
  c = digits_config(data_dir).data
  c.source.in_memory = False
  c.source.augment = "light"
  c.source.eval_split = ""
  d = data.load_transfer_data(c, 0)
  return _rate(d.source.batches(0, bs), steps, bs)


def bench_streaming_mock_imagenet(steps, bs):
  import tensorflow_datasets as tfds
  from merlin_jax import data
  c = digits_config("").data
  c.image_size, c.channels = 224, 3
  c.source.name, c.source.in_memory, c.source.augment = "imagenet2012", False, "inception"
  c.source.eval_split = ""
  c.target.name, c.target.num_train, c.target.num_val = "imagenet2012", 20, 10
  c.num_source_classes = c.num_target_classes = 1000
  c.shuffle_buffer = 256
  with tfds.testing.mock_data(num_examples=512):
    d = data.load_transfer_data(c, 0)
    return _rate(d.source.batches(0, bs), steps, bs, warmup=2)


def bench_step(data_dir, steps, bs):
  """Examples/s of the training program's MeRLin step (`train.make_train_step`: objective,
  gradient and optimizer update, state donated) on the digits default."""
  import jax
  import jax.numpy as jnp
  from merlin_jax import data, train
  from merlin_jax.methods import get_method
  from merlin_jax.methods.base import Context
  from merlin_jax.config_base import load_config
  from merlin_jax.models import make_backbone
  from merlin_jax.optim import make_optimizer
  config = load_config(os.path.join(_ROOT, "configs", "digits.py"))
  config.data.data_dir = data_dir
  d = data.load_transfer_data(config.data, 0)
  method = get_method("merlin")
  hp = method.hyper(config, d.num_source_classes, d.num_target_classes)
  ctx = Context(backbone=make_backbone(config.model, d.example_input), hp=hp)
  params, model_state = train.init_params(ctx, jax.random.key(0), d.example_input)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           model_state=model_state, opt_state=optimizer.init(params),
                           best_val_accuracy=jnp.zeros((), jnp.float32),
                           best_step=jnp.zeros((), jnp.int32))
  step = train.make_train_step(method, ctx, optimizer, jax.random.key(1))
  target = jax.device_put(d.target_train)
  it = d.source.batches(0, bs)
  batches = [jax.device_put(next(it)) for _ in range(4)]
  state, out = step(state, batches[0], target, None)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for i in range(steps):
    state, out = step(state, batches[i % 4], target, None)
  jax.block_until_ready(out)
  return steps * bs / (time.perf_counter() - t)


def main(argv):
  del argv
  from merlin_jax.data import tfds_io
  data_dir = _DATA_DIR.value
  tfds_io.get_builder("printed_digits", data_dir)   # build on first use
  tfds_io.get_builder("sklearn_digits", data_dir)
  bs, steps = _BATCH_SIZE.value, _STEPS.value
  rows = [
      ("digits in-memory, augment=none", bench_in_memory(data_dir, steps, bs, "none")),
      ("digits in-memory, augment=light", bench_in_memory(data_dir, steps, bs, "light")),
      ("digits streaming tf.data, light", bench_streaming_digits(data_dir, steps, bs)),
      ("mock imagenet2012 224px streaming, inception",
       bench_streaming_mock_imagenet(max(steps // 10, 5), 64)),
  ]
  if not _SKIP_STEP.value:
    rows.append(("CONSUMPTION: merlin train step (digits.py)",
                 bench_step(data_dir, max(steps // 10, 10), bs)))
  print(f"\n{'pipeline':48s} {'examples/s':>12s}")
  for name, rate in rows:
    print(f"{name:48s} {rate:12,.0f}")
  if not _SKIP_STEP.value:
    step_rate = rows[-1][1]
    print(f"\nin-memory (light) / step consumption: {rows[1][1] / step_rate:,.1f}x "
          f"(goal >= 5x)")


if __name__ == "__main__":
  app.run(main)
