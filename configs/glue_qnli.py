"""GLUE QNLI with BERT-base: fine-tuning, L2-SP, MeRLin-ft (paper Table 2).

  python -m merlin_jax.main --config=configs/glue_qnli.py:finetune,bert_dir=DIR \
      --workdir=/tmp/merlin/qnli_finetune
  (l2sp / merlin_ft instead of finetune; --config.seed=1,2 for more seeds)

Same protocol and hyperparameters as configs/glue_mrpc.py (see there; "ours" where the
paper gives none), on TFDS `glue/qnli` (prepared once:
`python -m merlin_jax.data.prepare glue/qnli --data_dir=...`): dev set
(TFDS 'validation') = reported target test; model selection on 2000 examples held out
of 'train'. 3 epochs = 9,632 steps of batch 32.
Note: merlin_ft's 'probe' evaluation featurises the whole D_t (~103k pairs) in one call:
set data.target.num_train lower (e.g. 20000) on a small accelerator.
"""

from merlin_jax.configs import common

TASK = "glue/qnli"
FIELDS = ('question', 'sentence')
NUM_TRAIN_SPLIT = 104743        # examples in TFDS glue/qnli 'train'
NUM_VAL = 2000                 # ours: held out of train for model selection


def get_config(arg: str | None = None):
  return common.glue(TASK, FIELDS, NUM_TRAIN_SPLIT, NUM_VAL, arg)
