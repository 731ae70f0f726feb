"""Text input pipeline: sentence(-pair) classification targets for the BERT backbone.

`pipeline.load_transfer_data` dispatches here when `config.data.kind == 'text'`; the
result is an `interface.TransferData` whose inputs are TOKENS = {'input_ids',
'token_type_ids', 'attention_mask'}, each int32 [N, max_length]:

    data.target_train / data.target_val   {'inputs': TOKENS, 'label': int32 [N]}
    data.eval_batches('target_test', B)   {'inputs': TOKENS, 'label', 'mask'} (padded)
    data.example_input                    TOKENS with one row (initialises the backbone)

Text is tokenised once, with the `tokenizers` library and the weights' own vocabulary
(tokenizer.json when the directory has one, else vocab.txt as a BERT WordPiece tokenizer,
lower-cased unless tokenizer_config.json says do_lower_case=false), as
`[CLS] a [SEP] b [SEP]`, truncated longest-first and padded to `data.text.max_length`.

Protocol (the paper's GLUE setting): target test = the whole `target.test_split` (GLUE's
dev set, TFDS 'validation'); model selection uses `target.num_val` examples held out of
`target.train_split`, stratified by label and seeded; D_t is `target.num_train` of the
rest (-1: all of it). The dev set is never used for selection.
"""

from __future__ import annotations

import json
import os

import numpy as np

from merlin_jax.data import tfds_io
from merlin_jax.data.interface import EvalSet, TransferData, take_rows
from merlin_jax.errors import ConfigError, DataError

TOKEN_KEYS = ("input_ids", "token_type_ids", "attention_mask")


# ---------------------------------------------------------------------------------------
# Tokenisation.


def make_tokenizer(hf_dir: str, max_length: int):
  """A `tokenizers.Tokenizer` for the weights in hf_dir (or the MiniLM alias)."""
  from tokenizers import Tokenizer
  from tokenizers.implementations import BertWordPieceTokenizer
  from merlin_jax.models import weights
  hf_dir = weights.resolve_hf_dir(hf_dir)
  tok_json = os.path.join(hf_dir, "tokenizer.json")
  vocab = os.path.join(hf_dir, "vocab.txt")
  if os.path.isfile(tok_json):
    tok = Tokenizer.from_file(tok_json)
  elif os.path.isfile(vocab):
    lower = True
    cfg_path = os.path.join(hf_dir, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
      with open(cfg_path) as f:
        lower = bool(json.load(f).get("do_lower_case", True))
    tok = BertWordPieceTokenizer(vocab, lowercase=lower)
  else:
    raise DataError(f"{hf_dir} has neither tokenizer.json nor vocab.txt: cannot tokenise")
  pad_id = tok.token_to_id("[PAD]")
  tok.no_padding()
  tok.enable_truncation(max_length, strategy="longest_first")
  tok.enable_padding(length=max_length, pad_id=0 if pad_id is None else pad_id,
                     pad_token="[PAD]")
  return tok


def encode_pairs(tok, first: list[str], second: list[str | None] | None,
                 max_length: int) -> dict:
  """[CLS] a [SEP] (b [SEP]) -> TOKENS, each int32 [N, max_length]."""
  if second is None:
    second = [None] * len(first)
  items = [a if b is None else (a, b) for a, b in zip(first, second)]
  out = {k: np.zeros((len(items), max_length), np.int32) for k in TOKEN_KEYS}
  for start in range(0, len(items), 8192):   # bounded memory for big sets (QNLI: 105k)
    encs = tok.encode_batch(items[start:start + 8192])
    for i, e in enumerate(encs, start):
      out["input_ids"][i] = e.ids
      out["token_type_ids"][i] = e.type_ids
      out["attention_mask"][i] = e.attention_mask
  return out


# ---------------------------------------------------------------------------------------
# Reading a TFDS text dataset.


def text_column(examples: dict, field: str) -> list[str]:
  """'a' -> column a; 'a+b' -> 'A : B' (e.g. the target word before its usage example)."""
  parts = [examples[f] for f in field.split("+")]
  return [" : ".join(_str(p[i]) for p in parts) for i in range(len(parts[0]))]


def _str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def read_split(builder, name: str, data_dir: str, split: str, fields) -> tuple[dict, np.ndarray]:
  """{field: [str]} for the fields used, and labels int64 [N], in the split's order."""
  tfds = tfds_io.import_tfds()
  feats = builder.info.features
  needed = sorted({f for field in fields for f in field.split("+")})
  missing = [f for f in needed + ["label"] if f not in feats]
  if missing:
    raise ConfigError("data.text.fields", f"dataset {name!r} has no feature(s) {missing}; it "
                      f"has {sorted(feats.keys())}")
  ds = tfds_io.as_dataset(builder, name, data_dir, split, shuffle_files=False)
  cols = {f: [] for f in needed}
  labels = []
  for batch in tfds.as_numpy(ds.batch(4096)):
    for f in needed:
      cols[f].extend(batch[f].tolist())
    labels.append(np.asarray(batch["label"], np.int64))
  labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
  return {field: text_column(cols, field) for field in fields}, labels


def tokenize_split(tok, texts: dict, fields, max_length: int) -> dict:
  """{field: [str]} -> TOKENS of the one or two `fields` (encode_pairs)."""
  first = texts[fields[0]]
  second = texts[fields[1]] if len(fields) > 1 else None
  return encode_pairs(tok, first, second, max_length)


# ---------------------------------------------------------------------------------------
# D_t / validation split.


def stratified_holdout(labels: np.ndarray, num_train: int, num_val: int, seed: int):
  """Disjoint (train_idx, val_idx): val has num_val examples in the label proportions of
  the split (largest remainders), train num_train of the rest (-1: all). Seeded, sorted."""
  labels = np.asarray(labels)
  n = len(labels)
  if num_val > n or (num_train > 0 and num_train + num_val > n):
    raise ValueError(f"need {max(num_train, 0)} + {num_val} target examples but the split has {n}")
  rng = np.random.default_rng((seed, 7))
  classes, counts = np.unique(labels, return_counts=True)
  share = counts * num_val / max(n, 1)
  k = np.floor(share).astype(int)
  k[np.argsort(-(share - k))[:num_val - k.sum()]] += 1
  val, rest = [], []
  for c, kc in zip(classes, k):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    val.append(idx[:kc])
    rest.append(idx[kc:])
  val = np.concatenate(val) if val else np.zeros([0], np.int64)
  rest = np.concatenate(rest) if rest else np.zeros([0], np.int64)
  rest = rest[rng.permutation(len(rest))]
  train = rest if num_train < 0 else rest[:num_train]
  return np.sort(train), np.sort(val)


# ---------------------------------------------------------------------------------------
# The TransferData the training program reads.


def _text_cfg(data_cfg):
  text = data_cfg.get("text", None)
  if text is None:
    raise ConfigError("data.text", "text data needs data.text.{tokenizer_dir,max_length,fields}")
  fields = tuple(text.fields)
  if not 1 <= len(fields) <= 2:
    raise ConfigError("data.text.fields", f"give one or two text fields, got {fields}")
  if not text.tokenizer_dir:
    raise ConfigError("data.text.tokenizer_dir", "set it to the BERT weights directory "
                      "(the same as model.hf_dir)")
  return text, fields


def get_text_builder(name: str, data_dir: str):
  """tfds_io.get_builder; wordnet_wic is built on first use from /usr/share/wordnet."""
  builder = tfds_io.get_builder(name, data_dir)
  if tfds_io.base_name(name) == "wordnet_wic" and not builder.is_prepared():
    from merlin_jax.data.builders import wordnet_wic
    manual = wordnet_wic.find_manual_files(name, None)["dir"]
    tfds = tfds_io.import_tfds()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder


def load_text_transfer_data(data_cfg, seed: int, *, need_source: bool = True,
                            process_index: int = 0, process_count: int = 1) -> TransferData:
  """config.data (kind 'text') -> TransferData with no source (see the module docstring)."""
  if need_source:
    raise ConfigError("method", "text targets have no source set here; use finetune, l2sp, "
                      "merlin_ft or target_only")
  text, fields = _text_cfg(data_cfg)
  tgt, data_dir = data_cfg.target, data_cfg.data_dir
  builder = get_text_builder(tgt.name, data_dir)
  tfds_io.check_num_classes(builder, tgt.name, data_cfg.num_target_classes,
                            "data.num_target_classes")
  tok = make_tokenizer(text.tokenizer_dir, int(text.max_length))

  texts, labels = read_split(builder, tgt.name, data_dir, tgt.train_split, fields)
  try:
    train_idx, val_idx = stratified_holdout(labels, int(tgt.num_train), int(tgt.num_val), seed)
  except ValueError as e:
    raise ConfigError("data.target.num_train", f"{e} ({tgt.name}:{tgt.train_split})") from None
  chosen = np.union1d(train_idx, val_idx)
  tokens = tokenize_split(tok, {f: [texts[f][i] for i in chosen] for f in fields}, fields,
                          int(text.max_length))
  pool = {"inputs": tokens, "label": labels.astype(np.int32)[chosen]}
  target_train = take_rows(pool, np.searchsorted(chosen, train_idx))
  target_val = take_rows(pool, np.searchsorted(chosen, val_idx))

  test_texts, test_labels = read_split(builder, tgt.name, data_dir, tgt.test_split, fields)
  if test_labels.size and test_labels.min() < 0:
    raise DataError(f"{tgt.name}:{tgt.test_split} has no labels (GLUE's 'test'); use "
                    "target.test_split='validation' (the dev set the paper reports)")
  test_tokens = tokenize_split(tok, test_texts, fields, int(text.max_length))
  num_classes = int(data_cfg.num_target_classes)
  return TransferData(
      source=None, target_train=target_train, target_val=target_val,
      # No source head is trained; the source count keeps Hyper well-formed.
      num_source_classes=num_classes, num_target_classes=num_classes,
      target_train_indices=train_idx, target_val_indices=val_idx,
      process_index=process_index, process_count=process_count,
      target_class_names=tfds_io.class_names(builder),
      eval_data={"target_test": EvalSet(arrays={"inputs": test_tokens,
                                                "label": test_labels.astype(np.int32)})})
