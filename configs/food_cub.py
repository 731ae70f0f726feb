"""Paper pair (large scale): Food-101 -> CUB-200-2011.

  python -m merlin_jax.main --config=configs/food_cub.py --workdir=/tmp/merlin/food_cub

Data, prepared once (nothing is downloaded at train time), then --config.data.data_dir=DIR:
  tfds build food101 --data_dir=DIR
  tfds build caltech_birds2011 --data_dir=DIR

Source: Food-101 train, streamed with tf.data (in_memory=False), inception crop + flip;
evaluation and the target images: resize the shorter side to 256 then center-crop 224.
Target: CUB-200-2011's train split (class-balanced D_t + val), test = its test split.
Needs an accelerator (ResNet at 224x224). Hyperparameters marked "ours" are not given by
the paper. `:local` shrinks everything for a smoke run (still needs the prepared data).
"""

from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  c = base_config()
  c.method = "merlin"
  c.total_steps = 20_000            # ours
  c.data.image_size = 224
  c.data.channels = 3
  c.data.source.name = "food101"
  c.data.source.split = "train"
  c.data.source.eval_split = "validation"
  c.data.source.augment = "inception"
  c.data.source.in_memory = False
  c.data.target.name = "caltech_birds2011"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 4994   # ours: CUB's 5,994 training images minus the validation split
  c.data.target.num_val = 1000    # ours: 5 per class, model selection only
  c.data.num_source_classes = 101
  c.data.num_target_classes = 200
  c.data.shuffle_buffer = 10_000    # ours
  c.data.prefetch = 2
  c.model.name = "resnet18"         # ours (resnet50 also available)
  c.model.batch_norm = True
  c.batch_size = 256                # ours
  c.optimizer.name = "momentum"     # ours
  c.optimizer.lr = 0.1 * c.batch_size / 256   # ours: linear scaling from 0.1 at 256
  c.optimizer.weight_decay = 1e-4   # ours
  c.optimizer.schedule = "cosine"   # ours
  c.optimizer.warmup_steps = 500    # ours
  c.split.train_size = 256          # ours: per-step resampled D_t^tr / D_t^val
  c.split.val_size = 256            # ours
  c.inner.kind = "ridge"            # ours: closed-form head, cheap for 200 classes
  c.inner.steps = 20                # ours
  c.inner.lr = 1.0                  # ours: eta relative to 1/L_hat (inner.step_size="normalized")
  c.rho = 1.0                       # ours
  c.eval.every = 1000
  c.eval.batch_size = 256
  c.checkpoint_every = 1000
  if arg == "local":
    c.total_steps = 4
    c.batch_size = 8
    c.split.train_size = 8
    c.split.val_size = 8
    c.eval.every = 2
    c.eval.batch_size = 16
    c.log_every = 1
  return c
