"""`wordnet_wic`: a WiC-style sentence-pair task built offline from WordNet's data files.

Does this usage example use the word in the sense this gloss defines? Debian's
`wordnet-base` (`/usr/share/wordnet/data.{noun,verb}`; nouns and verbs, as WiC) gives, for
every synset, its lemmas and a gloss "definition; \"usage example\"; ...". For every (lemma, part of speech)
with at least two senses and every sense s with a usage example that contains the lemma
(as a word prefix: "run" matches "running"):

  positive (label 1): (lemma : example, definition of s)
  negative (label 0): (lemma : example, definition of another sense of the same lemma,
                       chosen with a fixed seed)

so the two classes are balanced and a negative differs from its positive only in the
gloss. At most MAX_SENSES_PER_WORD senses (one example each) per lemma keep frequent
words from dominating. Split by lemma (crc32 of the lemma, fixed): 'test' holds ~6% of
the lemmas, disjoint from 'train' (as in WiC, test words are unseen in training). On
WordNet 3.0 (wordnet-base 1:3.0-*): 20,772 train pairs of 6,257 lemmas, 1,264 test pairs of
391 lemmas (a small test set keeps evaluation cheap on 2 CPU cores).

Features: word, pos, sentence1 (the usage example), sentence2 (the definition), label
ClassLabel(['different_sense', 'same_sense']). The text pipeline feeds
`word+sentence1` and `sentence2` (configs/wic_minilm.py).

Manual dir: /usr/share/wordnet by default (built on first use by the text pipeline), or
`python -m merlin_jax.data.prepare wordnet_wic --manual_dir=DIR`.
"""

from __future__ import annotations

import os
import re
import zlib

import numpy as np
import tensorflow_datasets as tfds

from merlin_jax.data.builders import common
from merlin_jax.errors import DataError

DEFAULT_DIR = "/usr/share/wordnet"
POS_FILES = {"noun": "n", "verb": "v"}   # as WiC: nouns and verbs
INSTALL = "apt-get update && apt-get install -y wordnet-base"
PREPARE_HINT = (f"run `{INSTALL}` (WordNet lands in {DEFAULT_DIR}), or pass a dir holding "
                "data.noun and data.verb with --manual_dir")
MAX_SENSES_PER_WORD = 2
TEST_PERCENT = 6
_QUOTED = re.compile(r'"([^"]*)"')


def find_manual_files(name: str, manual_dir: str | None) -> dict:
  """{'dir': d, 'files': {pos: path}} of the WordNet data files present in manual_dir
  (default /usr/share/wordnet); DataError naming the apt command when there are none."""
  del name
  d = manual_dir or DEFAULT_DIR
  files = {pos: os.path.join(d, f"data.{stem}") for stem, pos in POS_FILES.items()
           if os.path.isfile(os.path.join(d, f"data.{stem}"))}
  if not files:
    raise DataError(f"wordnet_wic: no WordNet data files (data.noun, ...) in {d}: {PREPARE_HINT}")
  return {"dir": d, "files": files}


def parse_data_file(path: str, pos: str):
  """-> [(lemmas [str], definition str, examples [str])] of a WordNet data.* file."""
  synsets = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if line.startswith("  ") or "|" not in line:   # licence header
        continue
      head, _, gloss = line.partition(" | ")
      fields = head.split()
      try:
        w_cnt = int(fields[3], 16)
      except (IndexError, ValueError):
        continue
      lemmas = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ").lower()
                for i in range(w_cnt)]
      examples = [e.strip() for e in _QUOTED.findall(gloss) if e.strip()]
      definition = gloss.split('"')[0].strip().rstrip(";").strip()
      if definition:
        synsets.append((lemmas, definition, examples))
  del pos
  return synsets


def _contains(example: str, lemma: str) -> bool:
  return re.search(r"\b" + re.escape(lemma), example.lower()) is not None


def is_test_word(lemma: str) -> bool:
  return zlib.crc32(lemma.encode("utf-8")) % 100 < TEST_PERCENT


def build_pairs(files: dict[str, str], seed: int = 0) -> dict[str, list[dict]]:
  """{'train': [example dicts], 'test': [...]} (see the module docstring)."""
  rng = np.random.default_rng(seed)
  senses: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
  for pos in sorted(files):
    for lemmas, definition, examples in parse_data_file(files[pos], pos):
      for lemma in dict.fromkeys(lemmas):
        senses.setdefault((lemma, pos), []).append((definition, examples))
  out = {"train": [], "test": []}
  for (lemma, pos) in sorted(senses):
    word_senses = senses[(lemma, pos)]
    if len({d for d, _ in word_senses}) < 2:
      continue
    usable = [(i, next(e for e in ex if _contains(e, lemma)))
              for i, (_, ex) in enumerate(word_senses) if any(_contains(e, lemma) for e in ex)]
    usable = usable[:MAX_SENSES_PER_WORD]
    split = "test" if is_test_word(lemma) else "train"
    for i, example in usable:
      definition = word_senses[i][0]
      others = [d for j, (d, _) in enumerate(word_senses) if j != i and d != definition]
      other = others[int(rng.integers(len(others)))]
      for gloss, label in ((definition, 1), (other, 0)):
        out[split].append({"word": lemma, "pos": pos, "sentence1": example,
                           "sentence2": gloss, "label": label})
  return out


class WordnetWic(common.OfflineBuilder):
  """WiC-style (usage example, gloss) pairs from WordNet's data files."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = PREPARE_HINT

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "word": tfds.features.Text(),
            "pos": tfds.features.Text(),
            "sentence1": tfds.features.Text(),
            "sentence2": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["different_sense", "same_sense"]),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    found = find_manual_files("wordnet_wic", common.manual_dir(dl_manager))
    pairs = build_pairs(found["files"])
    return {split: self._generate_examples(rows) for split, rows in pairs.items()}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row
