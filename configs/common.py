"""What several configs share: get_config's argument, the `:local` smoke variant, and the
recipes of the ImageNet-scale image pairs and of the BERT text targets.

Config files import it as `from merlin_jax.configs import common` (this folder is the
package `merlin_jax.configs`: installed as such, a symlink in the checkout; see
merlin_jax/config_names.py), so it resolves from anywhere. Every value a recipe sets that the paper does not state is
ours.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from merlin_jax import errors
from merlin_jax.config_base import base_config, override

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """get_config's string argument -> a ConfigDict with the keys of `defaults` (big_vision).

  `arg` is comma-separated items: `key=value` sets that key (cast to its default's type),
  the bare name of a bool key sets it to True, and one other bare item is the value of the
  first key of `defaults` (e.g. the method):

    parse_arg("finetune,local,bert_dir=D", method="finetune", local=False, bert_dir="")
    -> method='finetune', local=True, bert_dir='D'

  An unknown key, a second bare value or a value of the wrong type is a UserError (a typo
  fails, it is not ignored; --config reports it as one line).
  """
  result = ml_collections.ConfigDict(dict(defaults))
  first = next(iter(defaults), None)
  positional = first is not None and not isinstance(defaults[first], bool)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    if eq and key in defaults:
      result[key] = _cast(key, value, defaults[key])
    elif not eq and isinstance(defaults.get(item), bool):
      result[item] = True
    elif not eq and positional:
      result[first] = item
      positional = False   # one bare value only
    else:
      raise errors.UserError(f"config argument {arg!r}: unexpected {item!r} (takes "
                             f"{', '.join(f'{k}={v!r}' for k, v in defaults.items())})")
  return result


def _cast(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() not in _TRUE + _FALSE:
      raise errors.UserError(f"config argument {key}={value!r}: give true or false")
    return value.lower() in _TRUE
  try:
    return type(default)(value)
  except ValueError:
    raise errors.UserError(f"config argument {key}={value!r}: not a "
                           f"{type(default).__name__}") from None


def local(c: ml_collections.ConfigDict, *, total_steps: int = 20, eval_every: int = 10,
          log_every: int = 5, checkpoint_every: int | None = None,
          batch_size: int | None = None, eval_batch_size: int | None = None,
          split_size: int | None = None, target_batch_size: int | None = None,
          num_train: int | None = None, num_val: int | None = None,
          max_length: int | None = None,
          warmup_steps: int | None = None) -> ml_collections.ConfigDict:
  """The `:local` variant of a config, in place: a smoke run of `total_steps` outer steps.

  The data layout is kept (it still needs the prepared data). The defaults suit the small
  image pairs; larger configs also shrink what they pass (None: the config's value stays).
  split_size is both D_t^tr and D_t^val per step.
  """
  c.total_steps = total_steps
  c.eval.every = eval_every
  c.log_every = log_every
  sizes = {"checkpoint_every": checkpoint_every, "batch_size": batch_size,
           "eval.batch_size": eval_batch_size, "split.train_size": split_size,
           "split.val_size": split_size, "target_batch_size": target_batch_size,
           "data.target.num_train": num_train, "data.target.num_val": num_val,
           "data.text.max_length": max_length, "optimizer.warmup_steps": warmup_steps}
  return override(c, {k: v for k, v in sizes.items() if v is not None})


def large_image_pair(source: str, num_source_classes: int, target: str, num_target_classes: int,
                     num_train: int, num_val: int, arg: str | None = None,
                     source_eval_split: str = "validation") -> ml_collections.ConfigDict:
  """The recipe shared by the paper's ImageNet-scale pairs (ResNet at 224 px, streamed source).

  Only the datasets and the target's size differ between those pairs. arg: get_config's;
  'local' is the smoke variant (still needs the prepared data). Prepare the source as
  array_record (`python -m merlin_jax.data.prepare SOURCE --file_format=array_record
  --data_dir=DIR`, which also converts a tfrecord build in DIR):
  it is then read by index and a resumed run continues its exact sample order in O(1), on
  any process count. A tfrecord source is skipped through record by record on resume, and
  refuses a checkpoint written on another process count (merlin_jax/data/sources.py).
  """
  arg = parse_arg(arg, local=False)
  c = base_config()
  c.method = "merlin"
  c.total_steps = 20_000            # ours
  c.data.image_size = 224
  c.data.channels = 3
  c.data.source.name = source
  c.data.source.split = "train"
  c.data.source.eval_split = source_eval_split
  c.data.source.augment = "inception"   # random-resized crop + flip; eval: resize 256, crop 224
  c.data.source.in_memory = False
  c.data.target.name = target
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = num_train   # ours: the target's train split minus the validation split
  c.data.target.num_val = num_val       # ours: model selection only
  c.data.num_source_classes = num_source_classes
  c.data.num_target_classes = num_target_classes
  c.data.shuffle_buffer = 10_000    # ours
  c.model.name = "resnet18"         # ours (resnet50 also available)
  c.model.batch_norm = True
  c.model.dtype = "bfloat16"        # ours: bf16 activations, float32 params / BN stats / head
  c.batch_size = 256                # ours
  c.optimizer.name = "momentum"     # ours
  c.optimizer.lr = 0.1 * c.batch_size / 256   # ours: linear scaling from 0.1 at 256
  c.optimizer.weight_decay = 1e-4   # ours
  c.optimizer.schedule = "cosine"   # ours
  c.optimizer.warmup_steps = 500    # ours
  c.split.train_size = 256          # ours: per-step resampled D_t^tr / D_t^val
  c.split.val_size = 256            # ours
  c.inner.kind = "ridge"            # ours: a closed-form head is cheap for ~200 classes
  c.rho = 1.0                       # ours
  c.eval.every = 1000
  c.eval.batch_size = 256
  c.checkpoint_every = 1000
  if arg.local:
    local(c, total_steps=4, eval_every=2, log_every=1, batch_size=8, split_size=8,
          eval_batch_size=16)
  return c


def text_target(task: str, hf_dir: str, fields: Sequence[str], *, pooling: str,
                max_length: int, test_split: str) -> ml_collections.ConfigDict:
  """A 2-class text(-pair) target and a BERT-style encoder, no source set: what the GLUE and
  WiC configs share (the paper's Table 2 protocol: finetune, l2sp, merlin_ft).

  hf_dir: a Hugging Face BERT directory (or the 'all-MiniLM-L6-v2' alias): the architecture
  (model.hf_dir), the tokenizer (data.text.tokenizer_dir) and the pre-trained weights
  (pretrained.path; L2-SP's anchor). The caller sets the budget, sizes and learning rates.
  """
  c = base_config()
  # --- Data: text pairs, tokenised with the weights' vocabulary ------------------------
  c.data.kind = "text"
  c.data.target.name = task
  c.data.target.train_split = "train"
  c.data.target.test_split = test_split
  c.data.num_target_classes = 2
  c.data.num_source_classes = 2                    # unused (no source set)
  c.data.source.name = ""
  c.data.text.tokenizer_dir = hf_dir
  c.data.text.max_length = max_length
  c.data.text.fields = tuple(fields)
  # --- Model: the encoder from the HF dir; its pooled feature feeds the target head -----
  c.model.name = "bert"
  c.model.hf_dir = hf_dir
  c.model.num_layers = 0                           # 0: all layers of the checkpoint
  c.model.pooling = pooling
  c.model.remat = False
  c.pretrained.path = hf_dir                       # the backbone init; L2-SP's anchor
  c.pretrained.steps = 0
  # --- Optimisation (ours: the BERT fine-tuning recipe) ---------------------------------
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 0.01
  c.optimizer.schedule = "cosine"
  c.optimizer.grad_clip = 1.0
  c.alpha = 0.01                                   # ours: L2-SP pull to the pre-trained weights
  c.beta = 0.01                                    # ours: L2-SP decay of the new head
  c.inner.kind = "gd"
  c.inner.steps = 20                               # ours (n)
  c.rho = 1.0
  c.log_every = 10
  return c


def glue(task: str, fields: Sequence[str], num_train_split: int, num_val: int,
         arg: str | None) -> ml_collections.ConfigDict:
  """The GLUE protocol shared by configs/glue_{mrpc,rte,qnli}.py.

  arg: 'METHOD[,local][,bert_dir=DIR]'. Target test = the GLUE dev set (TFDS
  'validation', the paper's reported number); model selection on `num_val` examples held
  out of 'train' (never the dev set); D_t = the rest of 'train'.
  """
  arg = parse_arg(arg, method="finetune", local=False, bert_dir="")
  c = text_target(task, arg.bert_dir, fields, pooling="pooler", max_length=128,
                  test_split="validation")
  c.method = arg.method
  c.model.dtype = "bfloat16"                       # ours: bf16 activations, float32 params
  batch, epochs = 32, 3                            # ours: the BERT GLUE recipe
  num_train = num_train_split - num_val
  c.total_steps = epochs * num_train // batch      # 3 epochs of D_t
  c.data.target.num_train = -1                     # D_t = all of train minus the val holdout
  c.data.target.num_val = num_val
  c.optimizer.lr = 2e-5
  c.optimizer.warmup_steps = c.total_steps // 10
  c.target_batch_size = batch                      # finetune / l2sp: target minibatch
  # MeRLin-ft: each outer step splits a fresh minibatch into D_t^tr / D_t^val (ours).
  c.split.train_size = batch // 2
  c.split.val_size = batch // 2
  c.inner.lr = 0.5                                 # ours (eta, inner only; features in [-1, 1])
  c.inner.first_order = False
  c.eval.every = max(c.total_steps // 6, 1)
  c.eval.batch_size = 64
  c.checkpoint_every = c.eval.every
  if arg.local:                                    # smoke run: few steps, short sequences
    local(c, total_steps=6, eval_every=3, checkpoint_every=3, log_every=1, warmup_steps=1,
          max_length=32, target_batch_size=8, split_size=4, num_train=64, num_val=16)
  return c
