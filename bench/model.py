"""Cost of the niche model's reaction update against the pure diffusion-decay step.

Usage: python bench/model.py [--n 64 ...] [--dts 0.01 2] [--repeats 5] [--out bench/results.jsonl]

Problem: the tissue geometry (``tmesim.tissue``) at N^3, 20 um voxels, the 31
fields of the niche model, float32, initial fields from the tissue set-up
(tumor ball of radius N·5 um, stroma, vessels). For each step dt (0.01 min,
BioFVM's diffusion step, where most fields take one forward-Euler pass; and
2 min, the production step, where the solutes take RKL2 stages):

  transport   ``simulate`` with the model's species table and no reaction:
              the pure diffusion-decay step of the same 31 fields;
  full        the same with ``niche_reaction``: every process of M1-M18,
              its terms folded into the solute transport and the exact
              exponential update of cells and matrix;
  reaction    full − transport, the cost the model adds per step;
  ratio       reaction / transport (the issue's target: ≤ 2 at 64^3, dt 0.01).

Both run through ``tmesim.simulate`` with the stepper's parameters at t = 0
(``NicheProblem.inputs``). Median of ``repeats`` calls of 10 steps each
after a warm-up call (the compile time is reported apart). The plan follows
the default value bounds (oxygen uptake up to 1500 mmHg/min at K = 1 mmHg,
diffusion up to 1.5 times the defaults, the crowding pressure's stiffness).
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

STEPS = 10


def build(n: int, dt: float, reaction: bool):
    setup = tmesim.tissue(n=n, spacing=20.0, radius=5.0 * n, dt=dt)
    st = setup.stepper
    stepper = st if reaction else tmesim.Stepper(
        st.grid, st.table, dt, None, cell_speed=st.cell_speed, pressure=st.pressure,
        pressure_stiffness=st.pressure_stiffness)
    return setup, stepper, setup.problem.inputs(setup.values, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dts", type=float, nargs="+", default=[0.01, 2.0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results.jsonl")
    args = ap.parse_args()
    provenance = {"device": device_description(), "jax": jax.__version__,
                  "commit": git_commit(args.out), "bench": "model"}
    lines = []
    with open(args.out, "a") as out:
        for n, dt in ((n, dt) for n in args.n for dt in args.dts):
            times = {}
            for name, reaction in (("transport", False), ("full", True)):
                setup, stepper, params = build(n, dt, reaction)
                fields = setup.fields
                first, ts = time_calls(
                    lambda s=stepper, f=fields, p=params: tmesim.simulate(s, f, p, STEPS)[0],
                    args.repeats)
                times[name] = timing_fields(first, ts, STEPS)
                result = {"method": name, "N": n, "fields": len(setup.table), "dt": dt,
                          "dtype": "float32", "plan": stepper.describe(), **times[name]}
                lines.append(emit(result, provenance, out))
            reaction = times["full"]["step_s"] - times["transport"]["step_s"]
            lines.append(emit({"method": "reaction", "N": n, "dt": dt, "step_s": reaction,
                               "ratio_to_transport": reaction / times["transport"]["step_s"]},
                              provenance, out))
    print()
    for r in lines:
        extra = f"  ratio {r['ratio_to_transport']:.2f}" if "ratio_to_transport" in r else ""
        print(f"{r['method']:<14} N={r['N']} dt={r.get('dt', '-')!s:<5} "
              f"{1e3 * r['step_s']:8.2f} ms/step{extra}")


if __name__ == "__main__":
    jnp.zeros(1)  # initialise the backend before timing
    main()
