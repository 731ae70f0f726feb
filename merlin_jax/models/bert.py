"""BERT encoder (Devlin et al. 2019) in Flax Linen: h_phi for the text experiments (Table 2).

A pure function of (params, inputs): `BertEncoder().apply({'params': p}, inputs)` with
inputs = {'input_ids', 'token_type_ids', 'attention_mask'}, each int32 [batch, seq_len],
returns the sentence feature [batch, hidden] that feeds the target head:

  pooling='pooler'  tanh(W h_[CLS] + b), BERT's pooler (what BertForSequenceClassification
                    puts under its classifier; the default);
  pooling='cls'     h_[CLS] of the last layer;
  pooling='mean'    the attention-masked mean of the last layer (sentence-transformers).

The computation and the parameter names mirror Hugging Face's `BertModel` (post-LayerNorm
blocks, exact-erf GELU, additive mask of finfo.min on padded keys), so the weights in the
HF layout load one-to-one (`merlin_jax.models.weights`) and the outputs match
`transformers.BertModel` to float32 round-off (tests/test_bert.py).

No dropout: the shared `Backbone` interface passes no dropout RNG, so the encoder is
deterministic in train mode too (ours; BERT's recipe uses 0.1).
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from merlin_jax import keys
from merlin_jax.errors import ConfigError, UserError
from merlin_jax.models.dtype import compute_dtype

_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),   # HF "gelu" is the exact erf form
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture; field names follow Hugging Face's config.json."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  initializer_range: float = 0.02

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    """Reads an HF config.json (unknown keys ignored; only absolute positions supported)."""
    try:
      with open(path) as f:
        raw = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"cannot read the BERT config {path} ({type(e).__name__}); point "
                      "config.model.hf_dir at a Hugging Face BERT directory") from None
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise UserError(f"{path}: position_embedding_type={raw['position_embedding_type']!r} "
                      "is not supported (only 'absolute')")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


class BertModule(nn.Module):
  """A BERT sub-module: the architecture and the activations' dtype."""
  cfg: BertConfig
  dtype: jnp.dtype = jnp.float32


class BertEmbeddings(BertModule):

  @nn.compact
  def __call__(self, input_ids, token_type_ids):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    seq_len = input_ids.shape[1]
    words = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                     name="word_embeddings")(input_ids)
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                         name="position_embeddings")(jnp.arange(seq_len)[None, :])
    types = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                     name="token_type_embeddings")(token_type_ids)
    x = (words + positions + types).astype(self.dtype)                 # [B, L, H]
    # LayerNorm statistics are float32 (flax reduces in float32); its output is self.dtype.
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x)


class BertLayer(BertModule):
  """One post-LN transformer block: x + MHA -> LN -> x + FFN -> LN."""

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.cfg
    n_heads = cfg.num_attention_heads
    d_head = cfg.hidden_size // n_heads
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.normal(cfg.initializer_range))
    b, l, _ = x.shape
    split = lambda t: t.reshape(b, l, n_heads, d_head)                  # [B, L, heads, d]
    q = split(dense(cfg.hidden_size, "query")(x))
    k = split(dense(cfg.hidden_size, "key")(x))
    v = split(dense(cfg.hidden_size, "value")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d_head).astype(self.dtype)
    # Softmax in float32 (bf16 loses the small probabilities); a no-op cast in float32.
    probs = jax.nn.softmax((scores + bias).astype(jnp.float32), axis=-1).astype(self.dtype)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, cfg.hidden_size)
    attn = dense(cfg.hidden_size, "attention_output")(context)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                     name="attention_LayerNorm")(x + attn)
    act = _ACTIVATIONS[cfg.hidden_act]
    h = act(dense(cfg.intermediate_size, "intermediate")(x))
    out = dense(cfg.hidden_size, "output")(h)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                        name="output_LayerNorm")(x + out)


class BertEncoder(nn.Module):
  """Embeddings + `num_hidden_layers` blocks (+ pooler); `__call__` -> features [B, H]."""
  cfg: BertConfig
  pooling: str = "pooler"
  remat: bool = False          # nn.remat per block: keep only block inputs for the backward
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    cfg = self.cfg
    self.embeddings = BertEmbeddings(cfg, self.dtype)
    layer_cls = nn.remat(BertLayer) if self.remat else BertLayer
    self.layers = [layer_cls(cfg, self.dtype, name=f"layer_{i}")
                   for i in range(cfg.num_hidden_layers)]
    if self.pooling == "pooler":
      self.pooler = nn.Dense(cfg.hidden_size, dtype=self.dtype,
                             kernel_init=nn.initializers.normal(cfg.initializer_range))

  def encode(self, inputs):
    """-> (last hidden states [B, L, H], pooled [B, H] or None). Mirrors BertModel."""
    ids = jnp.asarray(inputs["input_ids"], jnp.int32)
    types = inputs.get("token_type_ids")
    types = jnp.zeros_like(ids) if types is None else jnp.asarray(types, jnp.int32)
    mask = inputs.get("attention_mask")
    mask = jnp.ones_like(ids) if mask is None else jnp.asarray(mask)
    # Additive key mask as in HF: 0 where attended, finfo.min on padding. [B, 1, 1, L]
    bias = ((1.0 - mask[:, None, None, :].astype(self.dtype))
            * jnp.finfo(self.dtype).min).astype(self.dtype)
    x = self.embeddings(ids, types)
    for layer in self.layers:
      x = layer(x, bias)
    pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooling == "pooler" else None
    return x, pooled

  def __call__(self, inputs, train: bool = False):
    del train  # deterministic (no dropout): see the module docstring
    hidden, pooled = self.encode(inputs)
    # Features in float32 (the heads and the inner solve run in float32).
    if self.pooling == "pooler":
      return pooled.astype(jnp.float32)
    if self.pooling == "cls":
      return hidden[:, 0].astype(jnp.float32)
    hidden = hidden.astype(jnp.float32)                                   # the mean in float32
    m = jnp.asarray(inputs["attention_mask"], hidden.dtype)[..., None]     # [B, L, 1]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


# ---------------------------------------------------------------------------------------
# Config -> module (registered as backbone 'bert' in merlin_jax.models).


def bert_config_from_model_cfg(model_cfg) -> BertConfig:
  """config.model -> BertConfig.

  model.hf_dir set: the architecture is that directory's config.json (the weights it holds
  are loaded through config.pretrained.path); model.num_layers > 0 keeps only the first
  layers. model.hf_dir '': the architecture from model.bert.* (random init; tests, smoke runs).
  """
  hf_dir = model_cfg.get("hf_dir", "")
  if hf_dir:
    from merlin_jax.models import weights
    cfg = BertConfig.from_json(os.path.join(weights.resolve_hf_dir(hf_dir), "config.json"))
  else:
    arch = model_cfg.get("bert", None)
    if arch is None:
      raise ConfigError("model.hf_dir", "set it to a Hugging Face BERT directory (config.json, "
                        "model.safetensors, vocab.txt) or give the architecture in model.bert.*")
    names = {f.name for f in dataclasses.fields(BertConfig)}
    cfg = BertConfig(**{k: v for k, v in arch.to_dict().items() if k in names})
  num_layers = int(model_cfg.get("num_layers", 0) or 0)
  if num_layers:
    if num_layers > cfg.num_hidden_layers:
      raise ConfigError("model.num_layers", f"{num_layers} exceeds the {cfg.num_hidden_layers} "
                        "layers of the pre-trained model")
    cfg = dataclasses.replace(cfg, num_hidden_layers=num_layers)
  if cfg.hidden_size % cfg.num_attention_heads:
    raise ConfigError("model.bert.hidden_size", f"{cfg.hidden_size} is not divisible by "
                      f"num_attention_heads={cfg.num_attention_heads}")
  if cfg.hidden_act not in _ACTIVATIONS:
    raise ConfigError("model.bert.hidden_act", f"unsupported {cfg.hidden_act!r}; use one of "
                      f"{sorted(_ACTIVATIONS)}")
  return cfg


def make_bert(model_cfg) -> BertEncoder:
  pooling = model_cfg.get("pooling", keys.default("model.pooling"))
  keys.check("model.pooling", pooling)   # an export's config is read here unchecked
  return BertEncoder(bert_config_from_model_cfg(model_cfg), pooling=pooling,
                     remat=bool(model_cfg.get("remat", False)), dtype=compute_dtype(model_cfg))
