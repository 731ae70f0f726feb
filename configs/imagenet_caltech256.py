"""Paper pair (large scale): ImageNet -> Caltech-256.

  python -m merlin_jax.main --config=configs/imagenet_caltech256.py --workdir=/tmp/merlin/imagenet_caltech256

Data, prepared once (nothing is downloaded at train time), then --config.data.data_dir=DIR:
  tfds build imagenet2012 --data_dir=DIR --manual_dir=IMAGENET_TARS   # ILSVRC2012 tars
  python -m merlin_jax.data.prepare caltech256 --manual_dir=C256 --data_dir=DIR
      # C256 holds 256_ObjectCategories/ (extracted 256_ObjectCategories.tar)

Source: ImageNet-1k train, streamed with tf.data (in_memory=False), inception crop + flip;
evaluation and the target images: resize the shorter side to 256 then center-crop 224.
Target: our `caltech256` builder (256 classes, clutter excluded; train = 60 per class,
test = the rest).
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
  c.data.source.name = "imagenet2012"
  c.data.source.split = "train"
  c.data.source.eval_split = "validation"
  c.data.source.augment = "inception"
  c.data.source.in_memory = False
  c.data.target.name = "caltech256"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 14080   # ours: our caltech256 builder's train split (60 per class) minus val
  c.data.target.num_val = 1280    # ours: 5 per class, model selection only
  c.data.num_source_classes = 1000
  c.data.num_target_classes = 256
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
  c.inner.kind = "ridge"            # ours: closed-form head, cheap for 256 classes
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
