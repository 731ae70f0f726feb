"""A simulation of the paper's theory setting (Liu et al., arXiv 2011.01418, "theory" part).

The paper proves, for a quadratic neural network and a source distribution with a
transferable and a source-specific feature, that MeRLin recovers the target ground truth
while pre-training and joint training do not. Its exact model is not available to us
(see shared/paper/notes.md), so the design below is OURS, not the paper's (docs/theory.md
has the long version and the reading of the results):

  features   h_phi(x) = ((phi_j . x)^2)_{j<m},  phi in R^{m x d};  prediction h_phi(x) @ w + b
  u, V       a random unit vector u and an orthonormal basis V [d, k] of a subspace orthogonal
             to u (seeded)
  target     x ~ N(0, I_d),  y = (u . x)^2 + sigma eps;  n_target <= k < d examples
  source     the V-part of x is replaced by sqrt(c) |u . x| xi (xi uniform on V's sphere), so
             y = (u . x)^2 = |P_V x|^2 / c: u (transferable) and V (source-specific, cheaper
             under weight decay when c > k^1.5) both explain the source label; in the target the
             k V-features are noise a head can memorise D_t with. `collinear=True` (k = 1) gives
             the 1-dim variant v . x = sqrt(c) (u . x).
  methods    pre-training (+ ridge head refit on D_t), joint training, MeRLin with a closed-form
             ridge inner head (inner.ridge_solve, differentiable through the solve) on resampled
             D_t^tr / D_t^val
  metrics    target test MSE, max_j cos^2(phi_j, u), energy of phi in V and in u, over steps;
             each method's objective at its trained params vs hand-built u / V solutions at their
             best scale and heads (objective_check)

Modules: `model` (config, data, network, methods, training), `objective` (the objective
check), `report` (tables, plot, the generated docs/theory_results.md), `__main__` (the program).

Run: python -m merlin_jax.experiments.theory --seeds=3 --out=docs/
"""
