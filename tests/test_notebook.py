"""notebooks/merlin_colab.ipynb runs top to bottom (nbclient, the venv's own kernel).

The notebook's `parameters` cell is overridden the way papermill does it: a cell tagged
`injected-parameters` right after it sets the tiny synthetic pair and a few outer steps, so
the whole notebook (two trainings, feature projection, inner loop, meta-gradient) runs in
well under a minute and a half on a busy 2-core CPU machine.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "merlin_colab.ipynb")
SMALL = {"PAIR": "configs/synthetic.py", "BUDGET_STEPS": 4, "EVAL_EVERY": 2,
         "METHODS": ["merlin", "joint"], "MAX_PLOT_POINTS": 100}


def _parameters_cell(nb):
  cells = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, "the notebook needs exactly one code cell tagged 'parameters'"
  return cells[0]


def _inject(nb, params) -> None:
  """papermill's convention: the overrides go in a new cell right after 'parameters'."""
  i = _parameters_cell(nb)
  defined = {t.id for node in ast.parse(nb.cells[i].source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
  missing = sorted(set(params) - defined)
  assert not missing, f"parameters cell does not define {missing}"
  source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  nb.cells.insert(i + 1, nbformat.v4.new_code_cell(
      source, metadata={"tags": ["injected-parameters"]}))


def _text(cell) -> str:
  out = []
  for o in cell.get("outputs", []):
    if o.output_type == "stream":
      out.append(o.text)
    elif "data" in o and "text/plain" in o.data:
      out.append(o.data["text/plain"])
  return "".join(out)


def test_stored_with_the_outputs_of_its_own_parameters():
  """A reader of the repository sees the figures: the notebook is committed executed, top
  to bottom in order, with its own parameters (no injected cell), every code cell run."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  _parameters_cell(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert not [c for c in code if "injected-parameters" in c.metadata.get("tags", [])]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it in order"
  assert not [o for c in code for o in c.outputs if o.output_type == "error"]
  figures = [o for c in code for o in c.outputs if "data" in o and "image/png" in o.data]
  assert len(figures) >= 4, "commit it with its figures (curves, features, inner loop, meta)"
  text = "\n".join(_text(c) for c in code)
  for method in ("merlin", "joint"):
    assert re.search(rf"^{method}: target test accuracy [0-9.]+", text, re.M), method
  assert os.path.getsize(NOTEBOOK) < 1_500_000


def test_notebook_runs_on_the_synthetic_pair(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  _inject(nb, dict(SMALL, WORKDIR_ROOT=str(tmp_path / "runs")))
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3", allow_errors=False,
      resources={"metadata": {"path": ROOT}})   # the kernel's working directory: the repo
  t0 = time.time()
  client.execute()   # raises CellExecutionError (with the cell's traceback) on any error
  print(f"notebook executed in {time.time() - t0:.1f} s")

  text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
  # The kernel was this interpreter (the venv's), and the package came from this checkout.
  m = re.search(r"^python\s*: (.+)$", text, re.M)
  assert m and os.path.realpath(m.group(1).strip()) == os.path.realpath(sys.executable), m
  assert re.search(r"^repo root\s*: " + re.escape(ROOT) + "$", text, re.M)

  for method in SMALL["METHODS"]:
    m = re.search(rf"^{method}: target test accuracy ([0-9.]+)", text, re.M)
    assert m, f"no final accuracy printed for {method}"
    assert 0.0 <= float(m.group(1)) <= 1.0
    assert os.path.isfile(os.path.join(tmp_path, "runs", f"synthetic_{method}_seed0_4steps",
                                       "model.safetensors"))
    m = re.search(rf"^{method}: after n=\d+ inner steps: train loss ([0-9.]+), "
                  rf"val loss ([0-9.]+)", text, re.M)
    assert m, f"no inner-loop summary for {method}"
  assert re.search(r"^\|\|meta-gradient\|\| = [0-9.e+-]+$", text, re.M)
  assert "cos(meta, source)" in text

  figures = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "data" in o and "image/png" in o.data]
  assert len(figures) >= 4, f"expected 4 figures (curves, features, inner loop, meta-gradient), got {len(figures)}"
