"""Bring your own dataset pair: a TFDS dataset whose image and label features have other
names than 'image' / 'label' is read through config.data.{source,target}.{image,label}_key."""

from __future__ import annotations

import numpy as np
import pytest

from merlin_jax.config_base import base_config
from merlin_jax.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")

from merlin_jax.data import image as image_lib, tfds_io  # noqa: E402


class RenamedShapes(tfds.core.GeneratorBasedBuilder):
  """3 classes of 8x8 gray images under the features 'picture' and 'kind'."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "picture": tfds.features.Image(shape=(8, 8, 1)),
        "kind": tfds.features.ClassLabel(names=["dot", "bar", "box"]),
        "caption": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(60, 0), "test": self._generate_examples(30, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = i % 3
      img = rng.integers(0, 60, (8, 8, 1)).astype(np.uint8) + np.uint8(60 * label)
      yield i, {"picture": img, "kind": label, "caption": f"example {i}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  RenamedShapes(data_dir=d).download_and_prepare()
  return d


def _cfg(data_dir, in_memory=True, image_key="picture", label_key="kind"):
  c = base_config().data
  c.data_dir, c.image_size, c.channels = data_dir, 8, 1
  c.num_source_classes = c.num_target_classes = 3
  c.source.name = c.target.name = "renamed_shapes"
  c.source.eval_split = "test"
  c.source.in_memory = in_memory
  c.target.num_train, c.target.num_val = 12, 6
  for part in (c.source, c.target):
    part.image_key, part.label_key = image_key, label_key
  return c


@pytest.mark.parametrize("in_memory", [True, False])
def test_other_feature_names(data_dir, in_memory):
  data = image_lib.load_image_transfer_data(_cfg(data_dir, in_memory), seed=0)
  assert data.target_train["inputs"].shape[1:] == (8, 8, 1)
  assert sorted(np.bincount(data.target_train["label"])) == [4, 4, 4]
  assert data.target_class_names == ("dot", "bar", "box")
  batch = next(data.source.batches(0, 8))
  assert np.asarray(batch["inputs"]).shape[1:] == (8, 8, 1) and len(batch["label"]) == 8
  test = next(data.eval_batches("target_test", 30))
  # The classes are separable by brightness: the labels came with their images.
  x = np.asarray(test["inputs"], np.float32).reshape(30, -1).mean(1)
  assert np.all(np.diff([x[test["label"] == k].mean() for k in range(3)]) > 0)


def test_a_missing_feature_names_the_config_key(data_dir):
  with pytest.raises(DataError, match="no image feature 'image'.*image_key"):
    image_lib.load_image_transfer_data(_cfg(data_dir, image_key="image"), seed=0)
  tfds_io.use_feature_keys("renamed_shapes")   # back to the defaults for other tests
