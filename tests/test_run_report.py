"""A run tells and shows what it made (merlin_jax/run_report.py, issue 29): a first line
before anything slow, no ETA from the compiling step, the result and where everything is at
the end, a learning-curve figure, and the hyperparameters in TensorBoard."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from merlin_jax import run_report, train
from tests.helpers import run_cli


def test_no_eta_until_a_compiled_step_has_been_timed():
  clock = train._TrainClock(600)   # pylint: disable=protected-access
  clock.start()
  clock.stop(first=True)
  clock._first = 30.0              # a slow compile must not become a 5-hour ETA
  text = clock.progress(1)
  assert "ETA" not in text and "steps/s" not in text and "first step 30.0 s" in text
  clock.stop(first=False)
  assert "ETA" in clock.progress(2)


def test_learning_curve_marks_the_selected_step(tmp_path):
  records = ([{"step": s, "target_val_accuracy": a, "target_val_loss": 2 - a}
              for s, a in [(0, 0.1), (10, 0.5), (20, 0.7), (30, 0.6)]]
             + [{"step": s, "loss": 3.0 / (s + 1)} for s in (5, 10, 15, 20, 25, 30)]
             + [{"step": 30, "final": True, "selected_step": 20, "target_test_accuracy": 0.68,
                 "best_target_val_accuracy": 0.7}])
  path = run_report.plot_learning_curve(str(tmp_path), records, "t")
  from PIL import Image
  img = np.asarray(Image.open(path).convert("RGB"))
  assert img.shape[0] > 300 and img.shape[1] > 800
  # The dashed selected-step line is black: black pixels in both panels' plot areas.
  dark = (img.sum(-1) < 100)
  assert dark[:, : img.shape[1] // 2].sum() > 200 and dark[:, img.shape[1] // 2:].sum() > 200
  assert run_report.plot_learning_curve(str(tmp_path / "x"), records[4:8], "t") is None


def test_a_run_tells_where_everything_is_and_shows_itself(tmp_path, capfd, caplog,
                                                          monkeypatch):
  monkeypatch.setenv("MERLIN_JAX_TENSORBOARD", "1")   # this test reads the hparams back
  caplog.set_level("INFO")
  wd = str(tmp_path / "run")
  # --verbosity=0 (INFO): parsing the flags again in this process (an earlier test ran the
  # CLI) resets the logging level to absl's --verbosity default, WARNING.
  code, err = run_cli(["--config.total_steps=6", "--config.eval.every=2",
                       "--config.log_every=2", "--verbosity=0"], capfd, workdir=wd)
  assert code == 0, err[-3000:]
  lines = caplog.messages   # absl's log, in order

  def find(pred):
    found = [i for i, l in enumerate(lines) if pred(l)]
    assert found, "\n".join(lines[-40:])
    return found[0]

  assert find(lambda l: "loading the data" in l) < find(lambda l: l.startswith("data loaded"))
  first = lines[find(lambda l: l.startswith("step 1/6"))]
  assert "ETA" not in first and "compilation included" in first
  assert "ETA" in lines[find(lambda l: l.startswith("step 2/6"))]
  tail = "\n".join(lines[-8:])
  for what in ("target test accuracy", os.path.join(wd, "model.safetensors"),
               os.path.join(wd, "metrics.jsonl"), f"tensorboard --logdir {wd}/tensorboard",
               os.path.join(wd, "learning_curve.png"), f"merlin_jax.load('{wd}')",
               f"python -m merlin_jax.predict --model={wd}"):
    assert what in tail, (what, tail)
  assert os.path.getsize(os.path.join(wd, "learning_curve.png")) > 10_000
  # TensorBoard: the hparams plugin's summary, holding the method and a learning rate.
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.plugins.hparams import plugin_data_pb2
  events = glob.glob(os.path.join(wd, "tensorboard", "**", "events.*"), recursive=True)
  hparams = {}
  for path in events:
    for event in event_file_loader.EventFileLoader(path).Load():
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name == "hparams":
          data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
          hparams.update(data.session_start_info.hparams)
  assert hparams["method"].string_value == "merlin", events
  assert hparams["optimizer.lr"].number_value > 0


def test_the_figure_leaves_matplotlibs_backend_alone(tmp_path):
  """A notebook trains in its kernel: plotting the curve must not switch its inline backend."""
  import matplotlib
  before = matplotlib.get_backend()
  records = [{"step": 0, "target_val_accuracy": 0.1}, {"step": 5, "target_val_accuracy": 0.5}]
  assert run_report.plot_learning_curve(str(tmp_path), records, "t")
  assert matplotlib.get_backend() == before
