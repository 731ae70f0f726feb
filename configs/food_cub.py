"""Paper pair (large scale): Food-101 -> CUB-200-2011.

  python -m merlin_jax.main --config=configs/food_cub.py --workdir=/tmp/merlin/food_cub

Data, prepared once (nothing is downloaded at train time), then --config.data.data_dir=DIR:
  python -m merlin_jax.data.prepare food101 --file_format=array_record --data_dir=DIR
  python -m merlin_jax.data.prepare caltech_birds2011 --data_dir=DIR

The source in array_record is read by index: a resumed run continues its exact sample
order at once, on any process count. One already built as tfrecord is converted with
`python -m merlin_jax.data.prepare food101 --file_format=array_record --data_dir=DIR`.

Source: Food-101 train, streamed with tf.data (in_memory=False), inception crop + flip;
evaluation and the target images: resize the shorter side to 256 then center-crop 224.
Target: CUB-200-2011's train split (class-balanced D_t + val), test = its test split.
Needs an accelerator (ResNet at 224x224). Hyperparameters marked "ours" are not given by
the paper. `:local` shrinks everything for a smoke run (still needs the prepared data).
"""

from merlin_jax.configs import common


def get_config(arg: str | None = None):
  # ours: CUB's 5,994 training images: 4,994 for D_t, 1,000 (5 per class) for validation
  return common.large_image_pair("food101", 101, "caltech_birds2011", 200,
                                 num_train=4994, num_val=1000, arg=arg)
