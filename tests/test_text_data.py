"""Text targets: the wordnet_wic builder on a fake WordNet file, tokenisation, the D_t /
validation holdout, the GLUE configs under `tfds.testing.mock_data`, and two-step runs of
l2sp and merlin_ft with a tiny random BERT given as an HF directory (the pretrained path)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from merlin_jax.data import pipeline, text
from merlin_jax.data.builders import wordnet_wic
from merlin_jax.errors import DataError
from tests.helpers import load_config, write_random_hf_bert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_CONFIGS = ["glue_mrpc", "glue_rte", "glue_qnli"]

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def synset_line(offset, pos, lemmas, gloss):
  words = " ".join(f"{w} 0" for w in lemmas)
  return f"{offset:08d} 03 {pos} {len(lemmas):02x} {words} 000 | {gloss}  \n"


def write_fake_wordnet(d, num_words=40):
  """data.noun with `num_words` two-sense lemmas (each sense with a usage example), one
  single-sense lemma (unusable) and a licence header; data.verb with one two-sense verb."""
  os.makedirs(d, exist_ok=True)
  lines, off = [HEADER], 100
  for i in range(num_words):
    w = f"w{i}"
    lines.append(synset_line(off, "n", [w, f"syn{i}"], f'sense one of w{i}; "the w{i} was red"'))
    lines.append(synset_line(off + 1, "n", [w], f'sense two of w{i}; "a w{i}s ran"; "no match"'))
    off += 2
  lines.append(synset_line(off, "n", ["loner"], 'only sense; "a loner"'))
  with open(os.path.join(d, "data.noun"), "w") as f:
    f.writelines(lines)
  with open(os.path.join(d, "data.verb"), "w") as f:
    f.writelines([HEADER,
                  synset_line(7, "v", ["w0_verb"], 'verb one; "to w0 verb it"'),
                  synset_line(8, "v", ["w0_verb"], 'verb two; "w0 verb again"')])
  return str(d)


def test_pairs_from_fake_wordnet(tmp_path):
  files = wordnet_wic.find_manual_files("wordnet_wic", write_fake_wordnet(tmp_path / "wn"))["files"]
  synsets = wordnet_wic.parse_data_file(files["n"], "n")
  assert synsets[0] == (["w0", "syn0"], "sense one of w0", ["the w0 was red"])
  pairs = wordnet_wic.build_pairs(files)
  rows = pairs["train"] + pairs["test"]
  # 40 nouns x 2 senses + the verb's sense with a matching example ("w0 verb"), x (pos, neg).
  assert len(rows) == 2 * (40 * 2 + 2)
  assert sum(r["label"] for r in rows) == len(rows) // 2
  for pos, neg in zip(rows[::2], rows[1::2]):
    assert (pos["label"], neg["label"]) == (1, 0)
    assert pos["sentence1"] == neg["sentence1"] and pos["sentence2"] != neg["sentence2"]
    assert pos["word"] in pos["sentence1"].lower()
  assert not any(r["word"] in ("loner", "syn0") for r in rows)   # single-sense lemmas
  train_words = {r["word"] for r in pairs["train"]}
  test_words = {r["word"] for r in pairs["test"]}
  assert train_words and not train_words & test_words


def test_missing_wordnet_names_the_apt_command(tmp_path):
  with pytest.raises(DataError, match=r"apt-get update && apt-get install -y wordnet-base"):
    wordnet_wic.find_manual_files("wordnet_wic", str(tmp_path))
  with pytest.raises(DataError) as e:
    wordnet_wic.find_manual_files("wordnet_wic", str(tmp_path))
  assert "\n" not in str(e.value)


def test_encode_pairs_layout(tmp_path):
  tok = text.make_tokenizer(write_random_hf_bert(tmp_path / "bert"), max_length=10)
  vocab = {w: i for i, w in enumerate(open(tmp_path / "bert" / "vocab.txt").read().split())}
  enc = text.encode_pairs(tok, ["w1 w2", "w1 " * 20], ["w3", None], max_length=10)
  cls, sep = vocab["[CLS]"], vocab["[SEP]"]
  assert enc["input_ids"][0].tolist() == [cls, vocab["w1"], vocab["w2"], sep, vocab["w3"], sep,
                                          0, 0, 0, 0]
  assert enc["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
  assert enc["attention_mask"][0].tolist() == [1] * 6 + [0] * 4
  assert enc["attention_mask"][1].sum() == 10 and enc["input_ids"][1][-1] == sep   # truncated
  assert all(v.dtype == np.int32 and v.shape == (2, 10) for v in enc.values())


def test_stratified_holdout():
  labels = np.array([0] * 80 + [1] * 20)
  tr, va = text.stratified_holdout(labels, -1, 10, seed=3)
  assert len(va) == 10 and np.sum(labels[va] == 1) == 2 and len(tr) == 90
  assert not np.intersect1d(tr, va).size
  tr2, va2 = text.stratified_holdout(labels, 30, 10, seed=3)
  np.testing.assert_array_equal(va, va2)
  assert len(tr2) == 30 and set(tr2) <= set(tr)
  with pytest.raises(ValueError):
    text.stratified_holdout(labels, 95, 10, seed=0)




def test_wordnet_wic_through_the_text_pipeline(tmp_path):
  wn = write_fake_wordnet(tmp_path / "wn")
  data_dir = str(tmp_path / "tfds")
  from merlin_jax.data import prepare
  prepare.prepare("wordnet_wic", manual_dir=wn, data_dir=data_dir)
  bert_dir = write_random_hf_bert(tmp_path / "bert")
  c = load_config("wic_minilm", "finetune,local")
  c.data.data_dir = data_dir
  c.data.text.tokenizer_dir = bert_dir
  c.data.target.num_train, c.data.target.num_val = 40, 20
  d = pipeline.load_transfer_data(c.data, seed=0, need_source=False)
  L = c.data.text.max_length
  assert d.target_train["inputs"]["input_ids"].shape == (40, L)
  assert d.target_val["label"].shape == (20,) and d.target_val["label"].dtype == np.int32
  assert set(d.target_train_indices).isdisjoint(d.target_val_indices)
  assert d.example_input["input_ids"].shape == (1, L)
  assert all(v.dtype == np.int32 for v in d.example_input.values())
  batches = list(d.eval_batches("target_test", 16))
  n_test = sum(int(b["mask"].sum()) for b in batches)
  assert n_test == len(wordnet_wic.build_pairs(
      wordnet_wic.find_manual_files("x", wn)["files"])["test"])
  assert all(b["inputs"]["attention_mask"].shape == (16, L) for b in batches)
  with pytest.raises(Exception, match="no source"):
    pipeline.load_transfer_data(c.data, seed=0, need_source=True)


@pytest.mark.parametrize("name", GLUE_CONFIGS)
def test_glue_config_under_mock_data(name, tmp_path):
  bert_dir = write_random_hf_bert(tmp_path / "bert")
  c = load_config(name, f"merlin_ft,bert_dir={bert_dir}")
  c.lock()
  assert c.data.target.test_split == "validation"   # the dev set is the reported test
  assert c.model.hf_dir == c.pretrained.path == c.data.text.tokenizer_dir == bert_dir
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.text.max_length = 16
  c.data.target.num_train, c.data.target.num_val = 20, 10
  with tfds.testing.mock_data(num_examples=40):
    d = pipeline.load_transfer_data(c.data, seed=0, need_source=False)
    batch = next(d.eval_batches("target_test", 8))
  assert d.target_train["inputs"]["token_type_ids"].shape == (20, 16)
  assert d.target_train["label"].max() < 2 and batch["label"].shape == (8,)


@pytest.mark.parametrize("method", ["l2sp", "merlin_ft"])
def test_two_steps_from_hf_weights(method, tmp_path):
  from merlin_jax import train
  bert_dir = write_random_hf_bert(tmp_path / "bert")
  c = load_config("glue_mrpc", f"{method},local,bert_dir={bert_dir}")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.text.max_length = 12
  c.total_steps = 2
  c.data.target.num_train, c.data.target.num_val = 16, 8
  c.eval.batch_size = 8
  workdir = str(tmp_path / "work")
  with tfds.testing.mock_data(num_examples=32):
    final = train.train_and_evaluate(c, workdir)
  assert 0.0 <= final["target_test_accuracy"] <= 1.0
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  if method == "l2sp":   # step 1's penalty is measured at the initial params = the HF weights
    first = next(l for l in lines if "l2sp_distance_sq" in l)
    assert first["l2sp_distance_sq"] == pytest.approx(0.0, abs=1e-10)
