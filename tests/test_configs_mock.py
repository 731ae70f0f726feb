"""Every paper config runs end to end (train_and_evaluate, 2 steps) on TFDS mock data.

The configs' data layout is kept (names, splits, image size, channels, signature,
exclude_target, streaming vs in memory); the model, batch and split sizes are shrunk so a
run takes seconds on CPU. The real data is never read: `tfds.testing.mock_data` serves
random examples for every dataset, catalog and merlin_jax builders alike.
"""

from __future__ import annotations

import os

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from merlin_jax import config_base, train  # noqa: E402
from tests.helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ["fashion_usps", "svhn_mnist", "imagenet_cub", "imagenet_caltech256",
                 "imagenet_cars", "food_cub", "signature_cifar10", "signature_fashion"]




def shrink(c, data_dir):
  c.total_steps = 2
  c.batch_size = 8
  c.data.data_dir = data_dir
  c.data.target.num_train = 20
  c.data.target.num_val = 10
  c.data.shuffle_buffer = 8
  c.split.train_size = 5
  c.split.val_size = 5
  c.inner.steps = 2
  c.model.name = "small_cnn"
  c.model.conv_widths = (4, 8)
  c.model.feature_dim = 16
  c.model.batch_norm = False
  c.eval.every = 2
  c.eval.batch_size = 16
  c.checkpoint_every = 2
  c.log_every = 1
  return c


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_runs_two_steps_on_mock_data(name, tmp_path):
  config = shrink(load_config(name), str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=40):
    final = train.train_and_evaluate(config, str(tmp_path / "workdir"))
  assert 0.0 <= final["target_test_accuracy"] <= 1.0
