"""Forward and gradient time of the radially symmetric organoid (``tmesim.spheroid``).

Usage: python bench/radial.py [--n 40 60] [--spacing 15 10] [--dt 2 5 10] [--days 21]
                              [--repeats 3] [--no-grad] [--cell-substeps K ...]
                              [--out bench/results.jsonl]

Problem: the untreated spheroid (R0 = 200 um, every process of the model),
float64, ``days`` simulated days at each dt, on each (n, spacing) pair;
observables saved every day (``SaveAt`` with ``tmesim.observables``).

  forward    jit(tumor_radius at the last day)(values)
  gradient   jit(value_and_grad(arrested_radius + tumor_radius + necrotic_radius at
             the last day)) with respect to five parameters (tumor_division_rate,
             csc_division_rate, o2_uptake, necrosis_rate, debris_lysis_rate),
             the rest of the values held fixed

--cell-substeps K ...: each case again with the cells' transport in K sub-steps a step
instead of the plan's (set by its explicit stability limit): what the sub-steps cost,
forward and in reverse mode, from the difference. A count below the plan's is a cost
attribution, not a scheme: the run may leave its stability limit (the record's value
says whether it stayed finite).

Times: ``lower().compile()`` timed apart (tracing + compiling), then the
median of ``repeats`` runs of the compiled program. Targets (issue 13): a
21-day forward run ≤ 2 s, its gradient ≤ 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from diffusion import device_description, emit, git_commit, timing_fields  # noqa: E402

jax.config.update("jax_enable_x64", True)
import tmesim  # noqa: E402

FITTED = ("tumor_division_rate", "csc_division_rate", "o2_uptake", "necrosis_rate",
          "debris_lysis_rate")


def timed(fn, args, repeats):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return first, times, compiled(*args)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[40, 60])
    ap.add_argument("--spacing", type=float, nargs="+", default=[15.0, 10.0])
    ap.add_argument("--dt", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    ap.add_argument("--days", type=float, default=21.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-grad", action="store_true")
    ap.add_argument("--cell-substeps", type=int, nargs="*", default=[])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    a = ap.parse_args(argv)
    if len(a.n) != len(a.spacing):
        ap.error("--n and --spacing pair up: give as many of each")
    prov = {"device": device_description(), "jax": jax.__version__,
            "commit": git_commit(Path(a.out)), "dtype": "float64"}
    with open(a.out, "a") as out:
        for n, h in zip(a.n, a.spacing):
            for dt in a.dt:
                setup = tmesim.spheroid(n=n, spacing=h, radius=200.0, dt=dt, dtype=jnp.float64)
                for sub in [None, *a.cell_substeps]:
                    case(a, prov, out, n, h, dt, setup.values, with_substeps(setup.problem, sub))


def with_substeps(problem, sub):
    """``problem`` with its cell group's sub-steps a step set to ``sub`` (None: as planned)."""
    if sub is None:
        return problem
    stepper = copy.copy(problem.stepper)
    groups = tuple(dataclasses.replace(g, stages=sub) if g.method == "cell" else g
                   for g in stepper.groups)
    object.__setattr__(stepper, "groups", groups)
    return dataclasses.replace(problem, stepper=stepper)


def case(a, prov, out, n, h, dt, values, problem):
    n_steps = int(round(a.days * 1440.0 / dt))
    steps = jnp.asarray(np.rint(np.arange(1, a.days + 1e-9) * 1440.0 / dt), jnp.int32)
    save = tmesim.SaveAt(steps, tmesim.observables)

    def radii(theta):
        v = tmesim.set_values(values, dict(zip(FITTED, theta)))
        o = tmesim.solve(problem, v, n_steps=n_steps, save=save).saved
        return o["tumor_radius"][-1] + o["arrested_radius"][-1] + o["necrotic_radius"][-1]

    theta = jnp.stack([values["params"][k] for k in FITTED])
    sub = max(g.stages for g in problem.stepper.groups)
    base = {"bench": "radial", "n": n, "spacing_um": h, "dt_min": dt,
            "days": a.days, "steps": n_steps, "cell_substeps": sub}
    first, times, value = timed(radii, (theta,), a.repeats)
    emit({**base, "what": "forward", "value": float(value),
          **timing_fields(first, times, 1)}, prov, out)
    if not a.no_grad:
        first, times, (value, grad) = timed(jax.value_and_grad(radii), (theta,), a.repeats)
        emit({**base, "what": "value_and_grad", "value": float(value),
              "grad": [float(g) for g in grad], **timing_fields(first, times, 1)}, prov, out)


if __name__ == "__main__":
    main()
