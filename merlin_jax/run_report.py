"""What a run tells and shows: its first lines, its last lines, its learning curve, its
hyperparameters in TensorBoard (issue 29). The training loop (train.py) calls these; they
only read the config, the data sizes, metrics.jsonl and the final metrics.

  start_line        the first line, before anything slow (what is loaded, what compiles)
  data_line         the data as loaded, and that the train step compiles next
  first_step_note   the first step's time (compilation): no ETA from it
  plot_learning_curve   WORKDIR/learning_curve.png from metrics.jsonl
  final_lines       the result and where everything is (model, metrics, TensorBoard, the
                    figure, the one-line load / predict)
  flat_hparams      the config as TensorBoard hparams (scalars and strings)
"""

from __future__ import annotations

import io
import os
from typing import Mapping

from merlin_jax.runtime import fs

FIGURE = "learning_curve.png"


def start_line(config, workdir: str) -> str:
  data = config.data
  pair = (f"{data.source.name} -> {data.target.name}" if data.get("source") is not None
          else data.target.name)
  return (f"{config.method} on {pair}, {config.total_steps} steps, workdir {workdir}: "
          "loading the data (TensorFlow starts), then compiling the train step")


def _rows(tree) -> int:
  if isinstance(tree, dict):
    return _rows(next(iter(tree.values()))) if tree else 0
  return len(tree)


def data_line(data, seconds: float) -> str:
  parts = [f"target train {_rows(data.target_train['label'])}",
           f"val {_rows(data.target_val['label'])}"]
  for name, ev in data.eval_data.items():
    if ev.arrays is not None:
      parts.append(f"{name.replace('_', ' ')} {_rows(ev.arrays['label'])}")
  n = getattr(data.source, "num_examples", None) if data.source is not None else None
  if n:
    parts.append(f"source {n}")
  return (f"data loaded in {seconds:.1f} s ({', '.join(parts)} examples); compiling the "
          "train step (the first step's line says how long it took)")


def first_step_note(seconds: float) -> str:
  """The progress text of the first step: it includes compilation, so no rate or ETA."""
  return (f"first step {seconds:.1f} s (compilation included; the rate and the time left "
          "come from the next steps)")


def final_lines(workdir: str, method: str, final: Mapping, figure: bool) -> list[str]:
  w = workdir.rstrip("/")
  acc = final.get("target_test_accuracy")
  lines = [f"{method}: target test accuracy "
           + (f"{acc:.4f}" if acc is not None else "n/a")
           + f" (model from step {final['selected_step']}, selected on target val accuracy "
           f"{final['best_target_val_accuracy']:.4f}; {final.get('train_seconds', 0):.0f} s "
           "of training)",
           f"  model:        {fs.join(w, 'model.safetensors')}",
           f"  metrics:      {fs.join(w, 'metrics.jsonl')} (the last line: these results)"]
  if figure:
    lines.append(f"  curve:        {fs.join(w, FIGURE)}")
  lines += [f"  TensorBoard:  tensorboard --logdir {fs.join(w, 'tensorboard')}",
            f"  use it:       python -c \"import merlin_jax; m = merlin_jax.load('{w}'); "
            "print(m.classes)\"   # m.predict(images)",
            f"  predict:      python -m merlin_jax.predict --model={w} --images=DIR"]
  return lines


def plot_learning_curve(workdir: str, records: list[dict], title: str) -> str | None:
  """Target validation accuracy and the losses over steps, the selected step marked; saved
  as WORKDIR/learning_curve.png. -> its path (None when there is nothing to plot)."""
  evals = [r for r in records if "target_val_accuracy" in r and not r.get("final")]
  final = next((r for r in reversed(records) if r.get("final")), None)
  if not evals:
    return None
  # A Figure without pyplot: no backend is chosen or switched, so a notebook that trains
  # in its kernel keeps its inline plots.
  from matplotlib.figure import Figure
  train = [r for r in records if "loss" in r and "target_val_accuracy" not in r
           and not r.get("final")]
  steps = [r["step"] for r in evals]
  fig = Figure(figsize=(10, 3.8))
  ax_acc, ax_loss = fig.subplots(1, 2)
  ax_acc.plot(steps, [r["target_val_accuracy"] for r in evals], "o-", color="C0", ms=3,
              label="target validation accuracy")
  ax_acc.set_xlabel("training step")
  ax_acc.set_ylabel("accuracy")
  ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="C1",
               label="training loss (mean since the previous line)")
  if "target_val_loss" in evals[0]:
    ax_loss.plot(steps, [r["target_val_loss"] for r in evals], "o-", color="C0", ms=3,
                 label="target validation loss")
  ax_loss.set_xlabel("training step")
  ax_loss.set_ylabel("loss")
  ax_loss.set_yscale("log")
  if final is not None and "selected_step" in final:
    s = final["selected_step"]
    label = f"selected: step {s}"
    if "target_test_accuracy" in final:
      label += f" (test acc {final['target_test_accuracy']:.3f})"
    for ax in (ax_acc, ax_loss):
      ax.axvline(s, color="k", ls="--", lw=1, label=label)
    sel = [r for r in evals if r["step"] == s]
    if sel:
      ax_acc.plot([s], [sel[0]["target_val_accuracy"]], "*", color="k", ms=12)
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  path = fs.join(workdir, FIGURE)
  fs.write_bytes(path, buf.getvalue())
  return path


def plot_learning_curve_safely(workdir: str, records: list[dict], config) -> bool:
  """plot_learning_curve on process 0; a failure is a warning (the run's results stand)."""
  import jax
  from absl import logging
  if jax.process_index() != 0:
    return False
  data = config.data
  pair = (f"{data.source.name} -> {data.target.name}" if data.get("source") is not None
          else data.target.name)
  try:
    return plot_learning_curve(workdir, records, f"{config.method}: {pair} "
                               f"(seed {config.seed})") is not None
  except Exception as e:  # noqa: BLE001 - matplotlib or the file system
    logging.warning("no %s (%s: %s)", FIGURE, type(e).__name__, e)
    return False


def flat_hparams(config) -> dict:
  """The config as {'optimizer.lr': 0.001, ...}: numbers, bools and strings (others: str)."""
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, Mapping) or hasattr(v, "items"):
        walk(key + ".", v)
      elif isinstance(v, (bool, int, float, str)):
        out[key] = v
      else:
        out[key] = str(v)

  walk("", config.to_dict() if hasattr(config, "to_dict") else config)
  return out
