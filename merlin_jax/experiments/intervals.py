"""The uncertainty of a gain: a paired difference over seeds with its confidence interval.

A gain over fine-tuning is read seed by seed (the same seed draws the same target
train/val split and the same initialisation for both methods, so pairing removes the
split-to-split variance they share), then summarised as

  mean d  ±  t_{0.975, n-1} * s_d / sqrt(n)      (95% Student t-interval, n - 1 dof)

where d_s = acc_method(s) - acc_finetune(s) and s_d the sample std (ddof=1). With n = 3
seeds t_{0.975, 2} = 4.30, so the interval is wide: a gain is only called a gain when its
interval excludes zero, else it reads as a tie. One named place for this, used by the
tables of compare, the suite and the target-size sweep.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LEVEL = 0.95
DESCRIPTION = ("paired difference to fine-tuning (same seed), mean [95% Student t-interval "
               "over seeds, n - 1 dof]; 'tie' when the interval covers 0")


def t_quantile(dof: int, level: float = LEVEL) -> float:
  """The two-sided Student t quantile t_{(1 + level) / 2, dof}."""
  from scipy import stats
  return float(stats.t.ppf(0.5 + level / 2, dof))


def paired_interval(values: Sequence[float], baseline: Sequence[float],
                    level: float = LEVEL) -> dict:
  """{mean, std (ddof=1), lo, hi, n, tie} of values - baseline, paired by position.

  n < 2: no interval (lo = hi = None, tie None): one seed says nothing about the spread.
  """
  d = np.asarray(values, np.float64) - np.asarray(baseline, np.float64)
  return interval_from_summary(float(np.mean(d)), float(np.std(d, ddof=1)) if d.size > 1
                               else 0.0, int(d.size), level)


def interval_from_summary(mean: float, std: float, n: int, level: float = LEVEL) -> dict:
  """The same from a recorded mean and sample std (ddof=1) of n paired differences."""
  if n < 2:
    return dict(mean=mean, std=std, lo=None, hi=None, n=n, tie=None)
  half = t_quantile(n - 1, level) * std / math.sqrt(n)
  lo, hi = mean - half, mean + half
  return dict(mean=mean, std=std, lo=lo, hi=hi, n=n, tie=bool(lo <= 0.0 <= hi))


def format_interval(iv: dict | None, scale: float = 100.0) -> str:
  """'+1.23 [-0.40, +2.86] tie' (percentage points with scale=100), or '–'."""
  if iv is None:
    return "–"
  mean = f"{scale * iv['mean']:+.2f}"
  if iv["lo"] is None:
    return f"{mean} (1 seed: no interval)"
  verdict = " tie" if iv["tie"] else ""
  return f"{mean} [{scale * iv['lo']:+.2f}, {scale * iv['hi']:+.2f}]{verdict}"
