"""The code's shape: no import cycle (late imports inside functions count), each config key
declared once and checked only by its declaration, tests that share helpers through one
module, and the docs' generated parts in step with the code. Reads source only (fast)."""

import ast
import glob
import os
import subprocess
import sys

import pytest

from merlin_jax import config_base, inner, keys, methods, optim
from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "merlin_jax")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _sources() -> dict[str, ast.Module]:
  files = glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)
  return {_module_name(f): ast.parse(open(f).read(), f) for f in sorted(files)}


def import_graph(sources: dict[str, ast.Module]) -> dict[str, set[str]]:
  """module -> the merlin_jax modules it imports, at the top or inside a function."""
  graph = {}
  for name, tree in sources.items():
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        assert not node.level, f"{name}: a relative import (the package uses absolute ones)"
        base = node.module or ""
        # `from pkg import sub` imports the submodule pkg.sub when there is one.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base
                   for a in node.names]
      else:
        continue
      edges.update(t for t in targets if t in sources and t != name)
    graph[name] = edges
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle_even_behind_late_imports():
  graph = import_graph(_sources())
  assert "merlin_jax.train" in graph["merlin_jax.experiments.selection"]   # a late import
  assert cycles(graph) == []


def test_the_cycle_check_sees_a_late_import_cycle():
  a = ast.parse("from merlin_jax import b\n")
  b = ast.parse("def f():\n  from merlin_jax import a\n")
  graph = import_graph({"merlin_jax.a": a, "merlin_jax.b": b})
  assert cycles(graph) == [["merlin_jax.a", "merlin_jax.b"]]


# --- one declaration per key ------------------------------------------------------------


def test_each_key_is_declared_once():
  names = [k.name for k in keys.KEYS]
  assert len(names) == len(set(names))
  hparams = {h.key for h in methods.declared().values()}
  assert not hparams & set(names), "a method hyperparameter is also declared in keys.py"
  for k in keys.KEYS:   # every default passes its own declaration
    k.check(k.default)


def test_inner_config_is_the_inner_keys():
  import dataclasses
  fields = {f.name: f.default for f in dataclasses.fields(inner.InnerConfig)}
  declared = {k.name.split(".", 1)[1]: k.default for k in keys.section("inner")}
  assert fields == declared
  assert inner.InnerConfig().step_size == "normalized" and inner.InnerConfig().lr == 1.0


def test_registries_match_the_declared_choices():
  assert tuple(optim.OPTIMIZERS) == keys.BY_NAME["optimizer.name"].choices
  from merlin_jax import models
  assert tuple(models.DTYPES) == keys.BY_NAME["model.dtype"].choices


def _use_site_rechecks(sources) -> list[str]:
  """Places outside keys.py that re-state a declared list of choices, or raise a range
  error ("must be ...") for a declared key."""
  choice_sets = {frozenset(k.choices): k.name for k in keys.KEYS
                 if k.choices is not None and len(k.choices) > 1}
  checked = {k.name for k in keys.KEYS if (k.choices, k.low, k.high) != (None, None, None)}
  found = []
  for name, tree in sources.items():
    if name == "merlin_jax.keys":
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
          isinstance(e, ast.Constant) for e in node.elts):
        values = frozenset(e.value for e in node.elts)
        if values in choice_sets and len(values) == len(node.elts):
          found.append(f"{name}:{node.lineno} re-states the choices of "
                       f"{choice_sets[values]}")
      if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigError"
          and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
          and node.args[0].value in checked):
        message = ast.unparse(node.args[1])
        if "must be" in message[:14] or "choose one of" in message:
          found.append(f"{name}:{node.lineno} re-checks {node.args[0].value}")
  return found


def test_no_use_site_rechecks_a_declared_range():
  assert _use_site_rechecks(_sources()) == []


def test_the_recheck_scan_finds_one():
  tree = ast.parse('raise ConfigError("inner.lr", f"must be > 0, got {x}")\n'
                   'OPTS = ("adam", "adamw", "sgd", "momentum")\n')
  found = _use_site_rechecks({"merlin_jax.somewhere": tree})
  assert len(found) == 2 and "inner.lr" in found[0] and "optimizer.name" in found[1]


# --- the docs' generated parts ----------------------------------------------------------


def _doc(name):
  return open(os.path.join(ROOT, "docs", name)).read()


def test_docs_key_table_is_generated_from_the_declaration():
  assert config_base.key_table() in _doc("architecture.md"), (
      "regenerate it: python -m merlin_jax.config_base --keys (docs/architecture.md, 'The keys')")


def test_docs_line_counts_come_from_the_command():
  """The counts change with every edit, so the doc says which command made them and has its
  rows (a new folder shows as a missing row); rerun it when the doc is touched."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "line_counts.py")],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  doc = _doc("architecture.md")
  assert "python docs/line_counts.py" in doc
  for row in out.splitlines()[2:]:
    label = row.split(" | ")[0]
    if "largest" not in label and "all of" not in label:
      assert label in doc, f"{label}: regenerate with python docs/line_counts.py"


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_method_lists_name_every_registered_method(doc):
  text = open(os.path.join(ROOT, doc)).read()
  assert config_base.method_list() in text


def test_every_jax_pin_is_the_one_of_requirements_txt():
  """requirements.txt pins jax. The places that cannot read it (pyproject.toml's
  dependencies, the launch scripts' remote installs) must say the same version; prose
  points at requirements.txt instead (measurement records may name what they ran on)."""
  import re
  pins = {}
  for path in glob.glob(os.path.join(ROOT, "**", "*"), recursive=True):
    if (".git" in path or ".venv" in path or not os.path.isfile(path)
        or not path.endswith((".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".sh", "run"))
        or os.path.basename(path) == "test_architecture.py"):
      continue
    text = open(path, errors="replace").read()
    for version in re.findall(r"\bjax(?:lib)?(?:\[\w+\])?==([\w.]+)|JAX_VERSION=\"([\w.]+)\"",
                              text):
      pins.setdefault(os.path.relpath(path, ROOT), set()).update(v for v in version if v)
  assert {p for p, v in pins.items() if v != {_pinned_jax()}} == set(), pins
  assert not any(p.endswith(".md") for p in pins), pins


def _pinned_jax() -> str:
  for line in open(os.path.join(ROOT, "requirements.txt")):
    if line.startswith("jax=="):
      return line.split("==")[1].split()[0]
  raise AssertionError("requirements.txt pins no jax")


# --- tests ------------------------------------------------------------------------------


def test_no_test_module_imports_another():
  bad = []
  for path in sorted(glob.glob(os.path.join(ROOT, "tests", "*.py"))):
    for node in ast.walk(ast.parse(open(path).read())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      names += ([f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module == "tests" else [])
      bad += [f"{os.path.basename(path)}: {n}" for n in names
              if n.startswith("tests.test_") or n.startswith("test_")]
  assert bad == []
