"""Paper pair (digits): Fashion-MNIST -> USPS.

  python -m merlin_jax.main --config=configs/fashion_usps.py --workdir=/tmp/merlin/fashion_usps

Data, prepared once (nothing is downloaded at train time):
  python -m merlin_jax.data.prepare fashion_mnist --data_dir=DIR   # source: catalog `fashion_mnist`
  python -m merlin_jax.data.prepare usps --manual_dir=USPS_DIR --data_dir=DIR
      # target: our manual-dir `usps` builder; USPS_DIR holds usps.h5 (Kaggle
      # bistaumanga/usps-dataset) or LIBSVM's usps.bz2 + usps.t.bz2
and pass --config.data.data_dir=DIR. (Offline alternative for the source:
`--config.data.source.name=fashion_mnist_local` after `apt-get install -y
dataset-fashion-mnist && python -m merlin_jax.data.prepare fashion_mnist_local`.)

USPS's 16x16 images are resized to Fashion-MNIST's 28x28x1. Small CNN; a few minutes per
1,000 steps on 2 CPU cores. Hyperparameters marked "ours" are not given by the paper.
`--config=configs/fashion_usps.py:local` is a tiny smoke run.
"""

from merlin_jax.configs import common
from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 2000              # ours
  c.data.image_size = 28
  c.data.channels = 1
  c.data.source.name = "fashion_mnist"
  c.data.source.split = "train"
  c.data.source.eval_split = "test"
  c.data.source.augment = "none"    # ours
  c.data.source.in_memory = True    # 60k x 28x28: fits in memory (deterministic batching)
  c.data.target.name = "usps"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 500     # ours: 50 labels per class
  c.data.target.num_val = 200       # ours: model selection only
  c.data.num_source_classes = 10
  c.data.num_target_classes = 10
  c.model.name = "small_cnn"        # ours
  c.batch_size = 128                # ours
  c.optimizer.lr = 1e-3             # ours
  c.split.train_size = 250          # ours: per-step resampled D_t^tr / D_t^val
  c.split.val_size = 250            # ours
  c.inner.steps = 20                # ours
  c.inner.lr = 1.0                  # ours: eta relative to 1/L_hat (inner.step_size="normalized")
  c.rho = 1.0                       # ours
  if arg.local:
    common.local(c)
  return c
