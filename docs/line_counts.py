"""The line counts of docs/architecture.md: `python docs/line_counts.py` (from the checkout).

Lines of every merlin_jax/**/*.py per folder (not the shipped configs), the largest modules, and the length of the
train loop (`train._train_and_evaluate`), as a markdown table.
"""

import ast
import collections
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(path: str) -> int:
  with open(path) as f:
    return sum(1 for _ in f)


def main() -> None:
  files = sorted(glob.glob(os.path.join(ROOT, "merlin_jax", "**", "*.py"), recursive=True))
  # merlin_jax/configs is the repo's configs/ (a link, installed with the package): not code.
  files = [f for f in files if not os.path.relpath(f, ROOT).startswith("merlin_jax/configs/")]
  counts = {os.path.relpath(f, os.path.join(ROOT, "merlin_jax")): _lines(f) for f in files}
  folders = collections.Counter()
  for rel, n in counts.items():
    folders[os.path.dirname(rel) or "(top level)"] += n
  tree = ast.parse(open(os.path.join(ROOT, "merlin_jax", "train.py")).read())
  loop = next(n for n in tree.body if getattr(n, "name", "") == "_train_and_evaluate")
  print("| where | lines |")
  print("|---|---|")
  for folder, n in sorted(folders.items()):
    print(f"| `{folder}` | {n:,} |")
  print(f"| all of `merlin_jax/` ({len(counts)} files) | {sum(counts.values()):,} |")
  for rel, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3]:
    print(f"| largest: `{rel}` | {n} |")
  print(f"| modules over 350 lines | {sum(n > 350 for n in counts.values())} |")
  print(f"| `train._train_and_evaluate` | {loop.end_lineno - loop.lineno + 1} |")


if __name__ == "__main__":
  main()
