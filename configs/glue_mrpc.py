"""GLUE MRPC with BERT-base: fine-tuning, L2-SP, MeRLin-ft (paper Table 2).

  python -m merlin_jax.main --config=configs/glue_mrpc.py:finetune,bert_dir=DIR \
      --workdir=/tmp/merlin/mrpc_finetune
  (l2sp / merlin_ft instead of finetune; --config.seed=1,2 for more seeds)

DIR: a Hugging Face BERT-base directory (config.json, model.safetensors, vocab.txt), e.g.
bert-base-uncased; it is both the architecture (model.hf_dir), the tokenizer
(data.text.tokenizer_dir) and the pre-trained weights (pretrained.path; L2-SP's anchor).
Data: TFDS `glue/mrpc`, prepared once with
`python -m merlin_jax.data.prepare glue/mrpc --data_dir=...`.
Protocol (paper): report accuracy on the GLUE dev set (TFDS 'validation') as the target
test; model selection on `num_val` examples held out of 'train' (never the dev set).
About 20 min per run on one A100-class GPU (3 epochs, batch 32, length 128; not measured).
Hyperparameters marked "ours" are not given by the paper (the usual BERT recipe where one
exists; the recipe is configs/common.py's `glue`). `:METHOD,local` is a smoke variant
(few steps, short sequences).
"""

from merlin_jax.configs import common

TASK = "glue/mrpc"
FIELDS = ("sentence1", "sentence2")
NUM_TRAIN_SPLIT = 3668          # examples in TFDS glue/mrpc 'train'
NUM_VAL = 400                   # ours: held out of train for model selection (~11%)


def get_config(arg: str | None = None):
  return common.glue(TASK, FIELDS, NUM_TRAIN_SPLIT, NUM_VAL, arg)
