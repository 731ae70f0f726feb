"""The one data interface the training program reads, and the one padded-batch helper.

`pipeline.load_transfer_data` returns a `TransferData` for every kind of data (images
through TFDS, text targets, the synthetic test pair):

    data.source.batches(start_step, global_batch_size)   # SourceStream, infinite
    data.target_train / data.target_val                  # {'inputs', 'label'} numpy
    data.example_input                                   # one row of zeros (model init)
    data.eval_sets()                                     # ['target_test', 'source_test', ...]
    data.eval_batches(name, batch_size)                  # padded, masked, this process's rows

`inputs` is what the backbone takes: float32 [N, H, W, C] images in [0, 1], or for text a
dict of token arrays {'input_ids', 'token_type_ids', 'attention_mask'}, each int32 [N, L].
A pytree here is an array or a (nested) dict of arrays.

This module imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from merlin_jax.errors import ConfigError


def tree_map(fn: Callable, tree):
  """fn applied to every array of `tree` (an array or nested dicts); keeps the key order."""
  if isinstance(tree, dict):
    return {k: tree_map(fn, v) for k, v in tree.items()}
  return fn(tree)


def take_rows(tree, idx):
  """Rows `idx` (an index array or a slice) of every array of `tree`."""
  return tree_map(lambda a: a[idx], tree)


def local_batch_size(global_batch_size: int, process_count: int, key: str) -> int:
  """This process's rows of a global batch; ConfigError(key) if it does not divide."""
  if global_batch_size % process_count:
    raise ConfigError(key, f"{global_batch_size} is not divisible by the "
                      f"{process_count} processes")
  return global_batch_size // process_count


def pad_batches(batches: Iterable[dict], batch_size: int, process_index: int = 0,
                process_count: int = 1) -> Iterator[dict]:
  """Global batches of at most `batch_size` rows -> this process's rows, padded and masked.

  batches: {'inputs': pytree [n, ...], 'label': [n]} with n <= batch_size (in practice
  only the last one is short). Each is padded at the end with zeros to batch_size rows;
  this process gets rows [p * b, (p + 1) * b) of it, b = batch_size // process_count:
  {'inputs': pytree [b, ...], 'label': int32 [b], 'mask': float32 [b]}, mask 0 on padding.
  Every process yields one batch per global batch (multi-host jit needs the same count).
  Raises ConfigError('eval.batch_size') now when batch_size is not divisible.
  """
  local = local_batch_size(batch_size, process_count, "eval.batch_size")
  lo, hi = process_index * local, (process_index + 1) * local

  def pad_local(batch):
    n = len(batch["label"])
    start, stop = min(lo, n), min(hi, n)   # only this process's rows are cut and padded
    pad = local - (stop - start)
    pad_rows = lambda a: np.pad(a[start:stop], [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return {"inputs": tree_map(pad_rows, batch["inputs"]),
            "label": pad_rows(np.asarray(batch["label"])).astype(np.int32),
            "mask": np.pad(np.ones(stop - start, np.float32), (0, pad))}

  return (pad_local(batch) for batch in batches)


def padded_batches(arrays: dict, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """The whole of `arrays` in order, as `pad_batches` of global batches of batch_size.

  arrays: {'inputs': pytree [N, ...], 'label': [N]} -> ceil(N / batch_size) batches
  {'inputs': pytree [b, ...], 'label': int32 [b], 'mask': float32 [b]} of this process's
  rows (b = batch_size // process_count); the process shares of a batch concatenate to the
  1-process batch.
  """
  n = len(arrays["label"])
  return pad_batches((take_rows(arrays, slice(s, s + batch_size))
                      for s in range(0, n, batch_size)),
                     batch_size, process_index, process_count)


class SourceStream(Protocol):
  """An infinite, seeded stream of source batches (this process's share of each)."""

  num_examples: int | None   # examples in the source (None: unknown, e.g. mock data)

  def batches(self, start_step: int, global_batch_size: int) -> Iterator[dict]:
    """Batch k is the batch of global step start_step + k: {'inputs': pytree
    [global_batch_size // process_count, ...], 'label': int32 [...]}; a pure function of
    (seed, step), so a resumed run sees what an uninterrupted one sees.

    A source whose order depends on the process count (sources.StreamingSource) also has
    `check_resume(saved_process_count)`, which the training program calls before resuming
    a checkpoint written by that many processes (it raises if it cannot continue exactly)."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation set: held in memory, or streamed (too big to cache)."""

  arrays: dict | None = None   # {'inputs': pytree [N, ...], 'label': int32 [N]}
  # batch_size -> the set in order as unpadded global batches {'inputs', 'label'} of
  # batch_size rows (the last may be short).
  batches_fn: Callable[[int], Iterable[dict]] | None = None


@dataclasses.dataclass
class TransferData:
  """Everything a run reads: the source stream, D_t, its validation split, the eval sets."""

  source: SourceStream | None              # None when no source is needed (or exists)
  target_train: dict                       # {'inputs': pytree [N_tr, ...], 'label': i32 [N_tr]}
  target_val: dict                         # same layout, disjoint from target_train
  num_source_classes: int
  num_target_classes: int
  target_train_indices: np.ndarray | None = None   # record indices in target.train_split
  target_val_indices: np.ndarray | None = None
  process_index: int = 0
  process_count: int = 1
  eval_data: dict[str, EvalSet] = dataclasses.field(default_factory=dict, repr=False)
  target_class_names: tuple = ()           # the label names, when the dataset has them

  @property
  def example_input(self):
    """One row of zeros shaped and typed like target_train['inputs'] (leading dim 1)."""
    return tree_map(lambda a: np.zeros((1,) + a.shape[1:], a.dtype),
                    self.target_train["inputs"])

  def eval_sets(self) -> list[str]:
    """The eval sets: 'target_test', ['source_test'], ['source_test_clean']."""
    return list(self.eval_data)

  def eval_batches(self, name: str, batch_size: int) -> Iterator[dict]:
    """The whole set `name` (one of eval_sets(), or 'target_val') in order, in global
    batches of `batch_size` padded at the end: see `pad_batches` for the layout."""
    if name == "target_val":
      return padded_batches(self.target_val, batch_size, self.process_index,
                            self.process_count)
    if name not in self.eval_data:
      raise KeyError(f"unknown eval set {name!r}; have {self.eval_sets()}")
    ev = self.eval_data[name]
    if ev.arrays is not None:
      return padded_batches(ev.arrays, batch_size, self.process_index, self.process_count)
    local_batch_size(batch_size, self.process_count, "eval.batch_size")   # raise before I/O
    return pad_batches(ev.batches_fn(batch_size), batch_size, self.process_index,
                       self.process_count)
