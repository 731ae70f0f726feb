"""The labelled target set D_t and its validation split: class-balanced, seeded, disjoint."""

from __future__ import annotations

import numpy as np


def class_balanced_split(labels: np.ndarray, num_train: int, num_val: int, seed: int,
                         num_classes: int | None = None):
  """Draws disjoint (train_idx, val_idx) from `labels`, each as class-balanced as possible.

  Rule: shuffle every class's indices with np.random.default_rng((seed, 7)) and a seeded
  class order, then deal round-robin over the classes (a class that runs out is skipped);
  the first num_train dealt indices are D_t, the next num_val the validation set. So each
  class gets floor or ceil of n / K when it has enough examples, and the same seed always
  gives the same sets. Returned indices are sorted.
  """
  labels = np.asarray(labels)
  need = num_train + num_val
  if need > len(labels):
    raise ValueError(f"need {num_train} + {num_val} target examples but the split has "
                     f"{len(labels)}")
  rng = np.random.default_rng((seed, 7))
  classes = np.arange(num_classes) if num_classes else np.unique(labels)
  classes = classes[rng.permutation(len(classes))]
  per_class = [np.flatnonzero(labels == c) for c in classes]
  per_class = [idx[rng.permutation(len(idx))] for idx in per_class]
  depth = max(len(idx) for idx in per_class)
  # [depth, K] table of indices, -1 where a class has run out; read row by row.
  table = np.full((depth, len(classes)), -1, np.int64)
  for k, idx in enumerate(per_class):
    table[:len(idx), k] = idx
  dealt = table.reshape(-1)
  dealt = dealt[dealt >= 0][:need]
  return np.sort(dealt[:num_train]), np.sort(dealt[num_train:])
