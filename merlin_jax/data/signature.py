"""The semi-synthetic 'signature' source of the paper (Sec. 5, CIFAR-10 / Fashion-MNIST).

The lower half of every source image is replaced by class-dependent noise, a feature that
predicts the source label perfectly but is absent from the (clean) target: a method that
learns only the source shortcut transfers badly, which is what MeRLin is shown to avoid.
"""

from __future__ import annotations

import numpy as np


def add_signature(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  strength: float = 1.0, std: float = 0.2,
                  num_classes: int = 10) -> np.ndarray:
  """Rows H//2..H of image i become iid N(strength * labels[i] / 10, std^2), all channels.

  images: float32 [N, H, W, C] (in [0, 1]); labels: int [N] in [0, num_classes).
  Returns a new float32 array (the input is not modified); values are not clipped, so the
  per-class statistics are exactly the stated ones. The mean uses c/10 as in the paper
  (10 classes); `num_classes` only validates the labels.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
  n, h, w, c = images.shape
  out = images.copy()
  mean = strength * labels.astype(np.float32) / 10.0                   # [N]
  noise = rng.normal(0.0, std, size=(n, h - h // 2, w, c)).astype(np.float32)
  out[:, h // 2:] = mean[:, None, None, None] + noise
  return out
