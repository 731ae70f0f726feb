"""Program: run every variant over --seeds seeds, the objective check, write the plot and tables.

  python -m merlin_jax.experiments.theory --seeds=3 --out=docs/

Writes OUT/theory.png and OUT/theory_results.md (generated: provenance and tables only);
docs/theory.md, the hand-written reading, is never written.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app, flags

from merlin_jax.experiments.theory import model, objective, report

# flags live here only: this module is the program, never imported as a library
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 per method and variant.", lower_bound=1)
_OUT = flags.DEFINE_string("out", "docs/", "Folder for theory.png and theory_results.md.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  seeds, out = _SEEDS.value, _OUT.value
  os.makedirs(out, exist_ok=True)
  base = model.TheoryConfig()
  t0 = time.time()
  results, trained = {}, {}
  for name, overrides in model.VARIANTS.items():
    cfg = dataclasses.replace(base, **overrides)
    results[name], trained[name] = model.run_all(cfg, seeds)
    print(f"[{name}] {time.time() - t0:.0f}s\n" + report.table(results[name]), flush=True)
  checks = objective.objective_check(base, trained["main"])  # the main variant's runs, not retrained
  print(report.objective_table(checks), flush=True)
  runtime = time.time() - t0
  report.plot(results["main"], base, os.path.join(out, report.PLOT_FILE))
  command = f"python -m merlin_jax.experiments.theory --seeds={seeds} --out={out}"
  report.write_results(os.path.join(out, report.RESULTS_FILE), command, seeds, base,
                       model.VARIANTS, results, checks, runtime)
  print(f"total {runtime:.0f}s")


if __name__ == "__main__":
  app.run(main)
