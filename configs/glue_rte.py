"""GLUE RTE with BERT-base: fine-tuning, L2-SP, MeRLin-ft (paper Table 2).

  python -m merlin_jax.main --config=configs/glue_rte.py:finetune,bert_dir=DIR \
      --workdir=/tmp/merlin/rte_finetune
  (l2sp / merlin_ft instead of finetune; --config.seed=1,2 for more seeds)

Same protocol and hyperparameters as configs/glue_mrpc.py (see there; "ours" where the
paper gives none), on TFDS `glue/rte` (prepared once:
`python -m merlin_jax.data.prepare glue/rte --data_dir=...`): dev set
(TFDS 'validation') = reported target test; model selection on 250 examples held out
of 'train'. 3 epochs = 210 steps of batch 32.
"""

from merlin_jax.configs import common

TASK = "glue/rte"
FIELDS = ('sentence1', 'sentence2')
NUM_TRAIN_SPLIT = 2490        # examples in TFDS glue/rte 'train'
NUM_VAL = 250                 # ours: held out of train for model selection


def get_config(arg: str | None = None):
  return common.glue(TASK, FIELDS, NUM_TRAIN_SPLIT, NUM_VAL, arg)
