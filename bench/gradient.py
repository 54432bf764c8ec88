"""Cost of a gradient through the whole niche model against the forward run.

Usage: python bench/gradient.py [--n 32] [--spacing 30] [--days 7] [--dt 2]
                                [--checkpoints 2 [3 ...]] [--time-all | --memory-only]
                                [--repeats 1]
                                [--out bench/results.jsonl]

Problem: the untreated organoid (``tmesim.organoid``: octant, N³ voxels of
``spacing`` um, radius 200 um, every process of the model), float32, for
``days`` simulated days at ``dt`` min, saving the observables once a day
(``SaveAt`` with ``tmesim.observables``). The loss is the sum over the saves
of log tumour volume, radius, CSC share and hypoxic share.

  forward    jit(loss)(values): the solve alone
  gradient   jit(grad(loss))(values): reverse mode with respect to every value
             (parameters, transport coefficients, medium, initial state, schedule)

Times: tracing and compiling ahead of time (``lower().compile()``, timed
apart), then the median of ``repeats`` runs of the compiled program. The
forward run does not depend on the checkpointing; the gradient is timed at the
first ``--checkpoints`` level (every level with ``--time-all``, none with
``--memory-only``: compiled only, for the memory of a run too long to time)
and compiled at the others for their memory. Memory: XLA's buffer
assignment of each compiled program (``compiled.memory_analysis()``):
arguments + outputs + temporaries − aliased, the most the program holds at
once (the process's resident memory would add the JAX runtime and the
compiler). ``--checkpoints`` lists the
nesting levels of the reverse-mode checkpointing to compare (``tmesim.solve``).
Targets (issue 10): gradient ≤ 3× the forward time and ≤ 4× its memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from diffusion import device_description, emit, git_commit, timing_fields  # noqa: E402

import tmesim  # noqa: E402

OBSERVED = ("tumor_volume", "tumor_radius", "csc_fraction", "hypoxic_fraction")


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--spacing", type=float, default=30.0)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--dt", type=float, default=2.0)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--time-all", action="store_true",
                    help="time the gradient at every --checkpoints level (default: the first; "
                         "the others are compiled for their memory only)")
    ap.add_argument("--memory-only", action="store_true",
                    help="compile every program for its memory and time none")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results.jsonl")
    args = ap.parse_args()
    provenance = {"device": device_description(), "jax": jax.__version__,
                  "commit": git_commit(args.out), "bench": "gradient"}
    setup = tmesim.organoid(n=args.n, spacing=args.spacing, radius=200.0, dt=args.dt)
    per_day = round(1440.0 / args.dt)
    n_steps = round(args.days * per_day)
    if n_steps < per_day:  # no save: the loss is 0 and XLA drops the whole run
        ap.error(f"--days {args.days:g}: at least 1 (the loss saves once a day)")
    save = tmesim.SaveAt(jnp.arange(per_day, n_steps + 1, per_day), tmesim.observables)
    state_bytes = setup.fields.size * setup.fields.dtype.itemsize
    common = {"N": args.n, "spacing_um": args.spacing, "days": args.days, "dt": args.dt,
              "steps": n_steps, "dtype": "float32", "fields": len(setup.table),
              "state_bytes": state_bytes, "plan": setup.stepper.describe()}

    def loss(values, levels):
        sol = tmesim.solve(setup.problem, values, n_steps=n_steps, save=save, checkpoints=levels)
        return sum(jnp.sum(jnp.log(sol.saved[k])) for k in OBSERVED)

    def measure(fn, levels, timed):
        start = time.perf_counter()
        compiled = jax.jit(fn, static_argnums=1).lower(setup.values, levels).compile()
        compile_s = time.perf_counter() - start
        result = {}
        if timed:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                jax.block_until_ready(compiled(setup.values))
                times.append(time.perf_counter() - start)
            result = timing_fields(None, times, 1)
        return {**result, "compile_s": compile_s, "peak_bytes": peak_bytes(compiled)}

    lines = []
    with open(args.out, "a") as out:
        forward = measure(loss, args.checkpoints[0], not args.memory_only)
        lines.append(emit({"method": "forward", **common, **forward}, provenance, out))
        for i, levels in enumerate(args.checkpoints):
            timed = (i == 0 or args.time_all) and not args.memory_only
            grad = measure(jax.grad(loss), levels, timed)
            lines.append(emit({"method": "gradient", "checkpoints": levels, **common, **grad},
                              provenance, out))
            ratio = {"memory_ratio": grad["peak_bytes"] / forward["peak_bytes"]}
            if timed:
                ratio["time_ratio"] = grad["step_s"] / forward["step_s"]
            lines.append(emit({"method": "gradient/forward", "checkpoints": levels, **common,
                               **ratio}, provenance, out))
    print()
    for r in lines:
        if r["method"] == "gradient/forward":
            time_ratio = f"time {r['time_ratio']:.2f}x, " if "time_ratio" in r else ""
            print(f"checkpoints {r['checkpoints']}: gradient/forward {time_ratio}"
                  f"memory {r['memory_ratio']:.2f}x")
        else:
            timing = f"{r['step_s']:.1f} s per call, " if "step_s" in r else ""
            print(f"{r['method']:<9} checkpoints {r.get('checkpoints', '-')}: {timing}"
                  f"compile {r['compile_s']:.1f} s, peak {r['peak_bytes'] / 2**20:.1f} MiB "
                  f"(state {r['state_bytes'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    jnp.zeros(1)  # initialise the backend before timing
    main()
