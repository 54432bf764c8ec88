"""Cost of one loss-and-gradient evaluation of a calibration problem against the forward run.

Usage: python bench/fit.py [PROBLEM ...] [--repeats 3] [--batch 1 4] [--workers 2]
                           [--out bench/results.jsonl]

Default problem: scenarios/calibration/browning2021_wm983b/problem.toml (a spheroid,
tmesim.spheroid, 30 shells of 20 um, dt 5 min, 18 days, 2061 measurements, 8 model
parameters and 2 noise levels in closed form).

  forward    jit(batched(nll))(thetas): every condition's solve and the likelihood
  gradient   jit(batched(value_and_grad(nll)))(thetas): what the optimiser calls
  gradient_vmap (batch 1 only, the baseline) jit(vmap(value_and_grad(nll))): before
             ``batched`` (commit f6a82b9) a batch of one ran under vmap, where every
             lax.cond with a batched predicate becomes a select that runs both branches

Each at batch sizes ``--batch`` (starts or profile points under vmap). Compile
time apart (the first call), then the median of ``repeats`` calls.

  workers    ``--workers`` W loss-and-gradient calls of batch 1 at W nearby points, on
             W threads at once (as ``tmesim fit`` runs starts and profile points),
             against the same W calls one after the other: the speed-up is what the
             fit gains from the cores (on a CPU one call does not use them all)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from diffusion import device_description, emit, git_commit  # noqa: E402

from tmesim import load_problem  # noqa: E402
from tmesim._fit import Objective, batched, default_workers  # noqa: E402

DEFAULT = Path(__file__).parent.parent / "scenarios/calibration/browning2021_wm983b/problem.toml"


def timed(fn, x, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("problems", nargs="*", default=[str(DEFAULT)])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, default=0,
                    help="threads for the workers measurement (0: one per core; 1: skip)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results.jsonl"))
    args = ap.parse_args()
    provenance = {"device": device_description(), "jax": jax.__version__,
                  "commit": git_commit(Path(args.out))}
    with open(args.out, "a") as out:
        for path in args.problems:
            obj = Objective(load_problem(path))
            common = {"bench": "fit-objective", "problem": str(Path(path).relative_to(
                Path(__file__).parent.parent)) if Path(path).is_absolute() else path,
                "measurements": len(obj.fp.measurements), "parameters": len(obj.ids),
                "steps": max(g.n_steps for g in obj.groups),
                "dtype": obj.fp.settings["dtype"]}
            for b in args.batch:
                x = jnp.asarray(np.tile(obj.nominal, (b, 1)), obj.dtype)
                fwd = jax.jit(batched(obj.nll))
                c_f, m_f, t_f = timed(fwd, x, args.repeats)
                c_g, m_g, t_g = timed(obj.value_and_grad_batch, x, args.repeats)
                row = {**common, "batch": b, "compile_forward_s": c_f, "forward_s": m_f,
                       "compile_gradient_s": c_g, "gradient_s": m_g,
                       "gradient_over_forward": m_g / m_f, "forward_times": t_f,
                       "gradient_times": t_g}
                if b == 1:
                    vmapped = jax.jit(jax.vmap(jax.value_and_grad(obj.nll)))
                    _, m_v, t_v = timed(vmapped, x, args.repeats)
                    row |= {"gradient_vmap_s": m_v, "gradient_vmap_times": t_v}
                emit(row, provenance, out)
            W = args.workers or default_workers()
            if W > 1:
                xs = [jnp.asarray(obj.nominal[None] + 0.01 * k, obj.dtype) for k in range(W)]
                jax.block_until_ready(obj.value_and_grad_batch(xs[0]))  # compiled
                one, many = [], []
                with ThreadPoolExecutor(W) as pool:
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        for x in xs:
                            jax.block_until_ready(obj.value_and_grad_batch(x))
                        one.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        list(pool.map(lambda x: jax.block_until_ready(
                            obj.value_and_grad_batch(x)), xs))
                        many.append(time.perf_counter() - t0)
                m1, mw = statistics.median(one), statistics.median(many)
                emit({**common, "bench": "fit-workers", "workers": W,
                      "sequential_s": m1, "threads_s": mw, "speedup": m1 / mw,
                      "sequential_times": one, "threads_times": many}, provenance, out)


if __name__ == "__main__":
    main()
