"""GLUE MRPC with BERT-base: fine-tuning, L2-SP, MeRLin-ft (paper Table 2).

  python -m merlin_jax.main --config=configs/glue_mrpc.py:finetune,bert_dir=DIR \
      --workdir=/tmp/merlin/mrpc_finetune
  (l2sp / merlin_ft instead of finetune; --config.seed=1,2 for more seeds)

DIR: a Hugging Face BERT-base directory (config.json, model.safetensors, vocab.txt), e.g.
bert-base-uncased; it is both the architecture (model.hf_dir), the tokenizer
(data.text.tokenizer_dir) and the pre-trained weights (pretrained.path; L2-SP's anchor).
Data: TFDS `glue/mrpc`, prepared once with `tfds build glue/mrpc --data_dir=...`.
Protocol (paper): report accuracy on the GLUE dev set (TFDS 'validation') as the target
test; model selection on `num_val` examples held out of 'train' (never the dev set).
About 20 min per run on one A100-class GPU (3 epochs, batch 32, length 128; not measured).
Hyperparameters marked "ours" are not given by the paper (the usual BERT recipe where one
exists). `:METHOD,local` is a smoke variant (few steps, short sequences).
"""

from merlin_jax.config_base import base_config

TASK = "glue/mrpc"
FIELDS = ("sentence1", "sentence2")
NUM_TRAIN_SPLIT = 3668          # examples in TFDS glue/mrpc 'train'
NUM_VAL = 400                   # ours: held out of train for model selection (~11%)


def parse_arg(arg):
  """'METHOD[,local][,bert_dir=DIR]' -> (method, local, bert_dir)."""
  method, local, bert_dir = "finetune", False, ""
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if item == "local":
      local = True
    elif item.startswith("bert_dir="):
      bert_dir = item[len("bert_dir="):]
    else:
      method = item
  return method, local, bert_dir


def get_config(arg: str | None = None):
  return glue_config(TASK, FIELDS, NUM_TRAIN_SPLIT, NUM_VAL, arg)


def glue_config(task, fields, num_train_split, num_val, arg):
  """The GLUE protocol shared by configs/glue_{mrpc,rte,qnli}.py."""
  method, local, bert_dir = parse_arg(arg)
  c = base_config()
  c.method = method
  batch, epochs = 32, 3                            # ours: the BERT GLUE recipe
  num_train = num_train_split - num_val
  c.total_steps = epochs * num_train // batch      # 3 epochs of D_t
  # --- Data: text pairs, tokenised with the weights' vocabulary ------------------------
  c.data.kind = "text"
  c.data.target.name = task
  c.data.target.train_split = "train"
  c.data.target.test_split = "validation"          # GLUE dev = the paper's reported number
  c.data.target.num_train = -1                     # D_t = all of train minus the val holdout
  c.data.target.num_val = num_val
  c.data.num_target_classes = 2
  c.data.num_source_classes = 2                    # unused (no source set)
  c.data.source.name = ""
  c.data.text = dict(tokenizer_dir=bert_dir, max_length=128, fields=tuple(fields))
  # --- Model: BERT from the HF dir; the pooled [CLS] feature feeds the target head -------
  c.model.name = "bert"
  c.model.hf_dir = bert_dir
  c.model.num_layers = 0                           # 0: all layers of the checkpoint
  c.model.pooling = "pooler"
  c.model.remat = False
  c.pretrained.path = bert_dir
  c.pretrained.steps = 0
  # --- Optimisation (ours: BERT fine-tuning recipe) --------------------------------------
  c.optimizer.name = "adamw"
  c.optimizer.lr = 2e-5
  c.optimizer.weight_decay = 0.01
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = c.total_steps // 10
  c.optimizer.grad_clip = 1.0
  c.target_batch_size = batch                      # finetune / l2sp: target minibatch
  c.alpha = 0.01                                   # ours: L2-SP pull to the BERT weights
  c.beta = 0.01                                    # ours: L2-SP decay of the new head
  # MeRLin-ft: each outer step splits a fresh minibatch into D_t^tr / D_t^val (ours).
  c.split.train_size = batch // 2
  c.split.val_size = batch // 2
  c.inner.kind = "gd"
  c.inner.steps = 20                               # ours (n)
  c.inner.lr = 0.5                                 # ours (eta, inner only; features in [-1, 1])
  c.inner.first_order = False
  c.rho = 1.0
  c.eval.every = max(c.total_steps // 6, 1)
  c.eval.batch_size = 64
  c.checkpoint_every = c.eval.every
  c.log_every = 10
  if local:                                        # smoke run
    c.total_steps = 6
    c.optimizer.warmup_steps = 1
    c.data.text.max_length = 32
    c.target_batch_size = 8
    c.split.train_size = c.split.val_size = 4
    c.data.target.num_train = 64
    c.data.target.num_val = 16
    c.eval.every = c.checkpoint_every = 3
    c.log_every = 1
  return c
