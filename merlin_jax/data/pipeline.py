"""The input pipeline's entry point: config.data -> `interface.TransferData`.

The training program calls exactly

    data = load_transfer_data(config.data, seed, need_source=..., process_index=...,
                              process_count=...)

and reads the result through the interface documented in `merlin_jax.data.interface`.
Which loader serves config.data:

  * the synthetic test pair (source or target named 'synthetic'): `synthetic.py`;
  * sentence(-pair) targets (`data.kind == 'text'`): `text.py`;
  * images through TFDS (everything else): `image.py` (sources in `sources.py`,
    preprocessing in `preprocess.py`, TFDS access in `tfds_io.py`).
"""

from __future__ import annotations

from merlin_jax.data import image, synthetic, text
from merlin_jax.data.interface import TransferData


def load_transfer_data(data_cfg, seed: int, *, need_source: bool = True,
                       process_index: int = 0, process_count: int = 1) -> TransferData:
  """Reads config.data's source (when need_source), target and eval sets.

  seed draws D_t / target_val (and orders the source stream); process_index of
  process_count selects this process's rows of every source and eval batch.
  """
  kwargs = dict(need_source=need_source, process_index=process_index,
                process_count=process_count)
  if synthetic.is_synthetic(data_cfg):
    return synthetic.load_synthetic(data_cfg, seed, **kwargs)
  if data_cfg.get("kind", "image") == "text":
    return text.load_text_transfer_data(data_cfg, seed, **kwargs)
  return image.load_image_transfer_data(data_cfg, seed, **kwargs)


def check_prepared(data_cfg, need_source: bool = True) -> None:
  """The DataError a run would raise once its data loads, raised now: every TFDS dataset
  that data_cfg names (target, and source when need_source) is prepared in its data dir.
  Our pip-only builders are built here (as a run would); synthetic data needs nothing. A
  driver of many runs (the suite, the target-size sweep) calls it for every pair first."""
  if synthetic.is_synthetic(data_cfg):
    return
  from merlin_jax.data import tfds_io
  get = (text.get_text_builder if data_cfg.get("kind", "image") == "text"
         else tfds_io.get_builder)
  for role in ("source", "target") if need_source else ("target",):
    name = data_cfg[role].name
    builder = get(name, data_cfg.data_dir)
    if not builder.is_prepared():
      raise tfds_io.not_prepared(name, data_cfg.data_dir)
