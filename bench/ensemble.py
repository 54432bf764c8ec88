"""Ensembles: B organoids advanced together with ``jax.vmap`` against one grid of as many voxels.

Usage: python bench/ensemble.py [--n 24 32] [--batches 1 8 27 64] [--steps 5]
       [--repeats 3] [--out bench/results.jsonl] [--plot bench/ensemble.png]

Problem: the untreated organoid (``tmesim.organoid``: octant of N³ voxels of
30 um, radius 0.4·N·30 um, every process, float32, dt = 2 min). Members of an
ensemble differ in their initial radius (0.3 to 0.5 of the box), so they
are B different runs, not B copies.

  ensemble   ``jax.vmap`` of ``tmesim.simulate`` over B members' fields;
  grid       the same model on one (k·N)³ grid with k³ = B (B a cube), the
             single run of the same voxel count that the ensemble competes with.

Throughput is voxel-steps per second (B·N³·steps / call time). The issue's
target: an ensemble reaches at least 70% of the single grid's throughput.
Median of ``repeats`` calls after a first call (reported as ``compile_s``).
One JSON line per case, appended to ``--out``, and a PNG of throughput
against batch size for each N (and the grids) at ``--plot``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from diffusion import device_description, emit, git_commit, time_calls, timing_fields  # noqa: E402

import tmesim  # noqa: E402

SPACING = 30.0
DT = 2.0


def setup(n: int, radius_fraction: float = 0.4):
    return tmesim.organoid(n=n, spacing=SPACING, radius=radius_fraction * n * SPACING, dt=DT)


def members(n: int, batch: int):
    """(stepper, params, fields (batch, F, n, n, n)): ``batch`` organoids whose initial
    radii run from 0.3 to 0.5 of the box."""
    base = setup(n)
    fractions = [0.3 + 0.2 * i / max(batch - 1, 1) for i in range(batch)]
    fields = jnp.stack([setup(n, f).fields for f in fractions])
    return base.stepper, base.problem.inputs(base.values, 0), fields


def ensemble_call(n: int, batch: int, steps: int):
    stepper, params, fields = members(n, batch)
    run = jax.jit(jax.vmap(lambda f: tmesim.simulate(stepper, f, params, steps)[0]))
    return lambda: run(fields), stepper


def grid_call(n: int, steps: int):
    s = setup(n)
    params = s.problem.inputs(s.values, 0)
    run = jax.jit(lambda f: tmesim.simulate(s.stepper, f, params, steps)[0])
    return lambda: run(s.fields), s.stepper


def cube_root(b: int) -> int | None:
    k = round(b ** (1 / 3))
    return k if k**3 == b else None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[24, 32])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 27, 64])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results.jsonl")
    ap.add_argument("--plot", type=Path, default=Path(__file__).parent / "ensemble.png")
    args = ap.parse_args()
    provenance = {"device": device_description(), "jax": jax.__version__,
                  "commit": git_commit(args.out), "bench": "ensemble"}
    rows = []
    with open(args.out, "a") as out:
        for n in args.n:
            for b in args.batches:
                call, st = ensemble_call(n, b, args.steps)
                first, ts = time_calls(call, args.repeats)
                t = timing_fields(first, ts, args.steps)
                row = {"method": "ensemble", "N": n, "batch": b, "voxels": b * n**3,
                       "dtype": "float32", "dt": DT, "plan": st.describe(), **t,
                       "voxel_steps_per_s": b * n**3 / t["step_s"]}
                k = cube_root(b)
                if k is not None:
                    gcall, gst = grid_call(k * n, args.steps)
                    gfirst, gts = time_calls(gcall, args.repeats)
                    g = timing_fields(gfirst, gts, args.steps)
                    grid_rate = (k * n) ** 3 / g["step_s"]
                    rows.append(emit({"method": "grid", "N": k * n, "batch": 1,
                                      "voxels": (k * n) ** 3, "dtype": "float32", "dt": DT,
                                      "plan": gst.describe(), **g,
                                      "voxel_steps_per_s": grid_rate}, provenance, out))
                    row["fraction_of_grid"] = row["voxel_steps_per_s"] / grid_rate
                rows.append(emit(row, provenance, out))
    print()
    for r in rows:
        extra = f"  {r['fraction_of_grid']:.2f} of the grid" if "fraction_of_grid" in r else ""
        print(f"{r['method']:<9} N={r['N']:<4} B={r['batch']:<4} {1e3 * r['step_s']:9.2f} ms/step "
              f"{r['voxel_steps_per_s'] / 1e6:9.2f} Mvoxel-steps/s{extra}")
    if args.plot:
        plot(rows, provenance, args.plot)


def plot(rows, provenance, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({r["N"] for r in rows if r["method"] == "ensemble"}):
        pts = sorted((r["voxels"], r["voxel_steps_per_s"]) for r in rows
                     if r["method"] == "ensemble" and r["N"] == n)
        ax.plot(*zip(*pts), "o-", label=f"vmap over B organoids of {n}³")
    grids = sorted((r["voxels"], r["voxel_steps_per_s"]) for r in rows if r["method"] == "grid")
    if grids:
        ax.plot(*zip(*grids), "ks--", label="one grid of as many voxels")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("voxels per call (B·N³)")
    ax.set_ylabel("voxel-steps per second")
    ax.set_title(f"organoid model, dt = {DT} min, float32\n{provenance['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    jnp.zeros(1)  # initialise the backend before timing
    main()
