"""Probe a fit's NLL along the lowest eigenvector of its Hessian (docs/fits.md, WM983b).

    python scenarios/calibration/probe_direction.py PROBLEM RESULT [T ...]

A Hessian by differences of the gradient that is not positive definite at the best
point means a saddle, or an NLL that is not smooth there (its differences straddle a
kink). This evaluates the NLL and its derivative along the eigenvector of the lowest
eigenvalue (over the parameters the fit does not hold on a bound) at steps T on the parameter scale
(default -0.03 to 0.03), then names the measurement rows whose NLL terms change slope
most between the two steps where the directional derivative jumps most.
"""

from __future__ import annotations

import sys

import h5py
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from tmesim._fit import Objective, _held  # noqa: E402
from tmesim._petab import load_problem  # noqa: E402

STEPS = (-0.03, -0.01, -0.003, -0.001, 0.0, 0.001, 0.0015, 0.002, 0.003, 0.01, 0.03)


def main(problem: str, result: str, steps=STEPS) -> None:
    obj = Objective(load_problem(problem), None)
    with h5py.File(result) as h5:
        best, grad = h5["best/theta"][()], h5["best/grad"][()]
        hessian = h5["laplace/hessian"][()]
        rows = [f"{o.decode()} at day {t / 1440:.2f} of the run" for o, t in
                zip(h5["measurements/observable"][()], h5["measurements/time_min"][()])]
    free = ~_held(best, grad, obj.lower, obj.upper)  # as the fit's summary judges it
    w, vectors = np.linalg.eigh(hessian[np.ix_(free, free)])
    v = np.zeros(len(best))
    v[free] = vectors[:, 0]
    print(f"lowest eigenvalue {w[0]:.4g}; its vector: "
          + ", ".join(f"{i} {x:+.3f}" for i, x in zip(obj.ids, v) if abs(x) > 0.01))
    terms = jax.jit(lambda theta: obj.evaluate(theta, obj.simulate(theta)[0])[2])
    steps = sorted(steps)
    slopes, row_terms = [], []
    for t in steps:
        value, grad = obj.value_and_grad_batch(np.array([best + t * v]))
        slopes.append(float(np.asarray(grad[0]) @ v))
        row_terms.append(np.asarray(terms(best + t * v)))
        print(f"t {t:+.4f}: NLL {float(value[0]):.6f}, derivative along it {slopes[-1]:+.4f}")
    k = int(np.argmax(np.diff(slopes) / np.diff(steps)))
    a, b = steps[k], steps[k + 1]
    print(f"largest change of the derivative between t = {a:g} and {b:g}")
    if 0 < k < len(steps) - 2:  # second differences of each row's term around it
        before = (row_terms[k] - row_terms[k - 1]) / (a - steps[k - 1])
        after = (row_terms[k + 2] - row_terms[k + 1]) / (steps[k + 2] - b)
        change = after - before
        for i in np.argsort(-np.abs(change))[:8]:
            print(f"  row {i}: {rows[i]}, its slope changes by {change[i]:+.3g}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [float(t) for t in sys.argv[3:]] or STEPS)
