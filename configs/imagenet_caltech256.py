"""Paper pair (large scale): ImageNet -> Caltech-256.

  python -m merlin_jax.main --config=configs/imagenet_caltech256.py --workdir=/tmp/merlin/imagenet_caltech256

Data, prepared once (nothing is downloaded at train time), then --config.data.data_dir=DIR:
  python -m merlin_jax.data.prepare imagenet2012 --file_format=array_record --data_dir=DIR \
      --manual_dir=IMAGENET_TARS   # ILSVRC2012 tars
  python -m merlin_jax.data.prepare caltech256 --manual_dir=C256 --data_dir=DIR
      # C256 holds 256_ObjectCategories/ (extracted 256_ObjectCategories.tar)

The source in array_record is read by index: a resumed run continues its exact sample
order at once, on any process count. One already built as tfrecord is converted with
`python -m merlin_jax.data.prepare imagenet2012 --file_format=array_record --data_dir=DIR`.

Source: ImageNet-1k train, streamed with tf.data (in_memory=False), inception crop + flip;
evaluation and the target images: resize the shorter side to 256 then center-crop 224.
Target: our `caltech256` builder (256 classes, clutter excluded; train = 60 per class,
test = the rest).
Needs an accelerator (ResNet at 224x224). Hyperparameters marked "ours" are not given by
the paper. `:local` shrinks everything for a smoke run (still needs the prepared data).
"""

from merlin_jax.configs import common


def get_config(arg: str | None = None):
  # ours: our caltech256 builder's train split (60 per class): 14,080 for D_t, 1,280 (5 per class) for validation
  return common.large_image_pair("imagenet2012", 1000, "caltech256", 256,
                                 num_train=14080, num_val=1280, arg=arg)
