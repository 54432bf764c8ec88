"""Cost of the niche model's reaction update against the pure diffusion-decay step.

Usage: python bench/model.py [--n 64 ...] [--dts 0.01 2] [--repeats 5] [--cells-unstiff]
                             [--parts] [--out bench/results.jsonl]

Problem: the tissue geometry (``tmesim.tissue``) at N^3, 20 um voxels, the 32
fields of the niche model, float32, initial fields from the tissue set-up
(tumor ball of radius N·5 um, stroma, vessels). For each step dt (0.01 min,
BioFVM's diffusion step, where most fields take one forward-Euler pass; and
2 min, the production step, where the solutes take RKL2 stages):

  transport   ``simulate`` with the model's species table and no reaction:
              the pure diffusion-decay step of the same 32 fields;
  full        the same with the tissue's reaction (``NicheReaction``): every
              process of M1-M18 and the mixture flow's Poisson solve, its
              terms folded into the solute transport and the exact
              exponential update of cells and matrix;
  reaction    full − transport, the cost the model adds per step;
  ratio       reaction / transport (issue 3's target: ≤ 2 at 64^3, dt 0.01);
  full-cells-unstiff  with ``--cells-unstiff``: the full step with the cells'
              sub-steps at their positivity limit alone (the crowding
              pressure's stiffness not counted, ``Stepper.pressure_stiffness``
              = 0): not a stable plan over the parameter bounds, but the most
              an implicit pressure step could save;
  part ...    with ``--parts``: where the full step goes. ``part none`` is the
              step with every group's transport left out (the reaction terms
              that the cells' and matrix's exact update reads, and that
              update); ``part <group>`` the same with that one group's
              transport kept, less ``part none``: the group's transport and
              the reaction terms only it reads (named by method, stages and
              field count; ``group`` lists the fields). A group with no
              transport (``static``) reads as noise around 0;
  stencil-pass  one plain 7-point stencil pass (``jnp.pad``, in a ``lax.scan``)
              over as many fields, the unit of ``passes`` = step / pass on the
              transport and full lines (issue 12's target: full ≤ 3.5 at 64³,
              dt 2), with its GB/s (one read and one write per pass);
  copy        the machine's copy bandwidth in the same run (``jax-scale-loop``:
              a jitted loop of ``x * 1.0001`` over as many fields at
              max(N, 128)³, 256 MiB or more, beyond the caches: on a 2-core
              AMD EPYC the 32 MiB state at 64³ gave 73-78 GB/s, 256 MiB to 1
              GiB 32-48 and NumPy's copy of 512 MiB 41; one read and one write
              per pass). The
              transport and full lines report the bandwidth they achieve on
              the bytes a step must move (every field read once and written
              once: 2 × 32 × N³ × 4 bytes) and its fraction of this copy
              bandwidth (issue 12: achieved bandwidth as a fraction of the
              machine's copy bandwidth).

``--max-stages 1000`` times the RKL2-only plan (the plan before the implicit
solver) for comparison in the same run.

Both run through ``tmesim.simulate`` with the stepper's parameters at t = 0
(``NicheProblem.inputs``). Median of ``repeats`` calls of 10 steps each
after a warm-up call (the compile time is reported apart). The plan follows
the default value bounds (oxygen uptake up to 1500 mmHg/min at K = 1 mmHg,
diffusion up to 1.5 times the defaults, the crowding pressure's stiffness).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from diffusion import (  # noqa: E402
    device_description,
    emit,
    git_commit,
    jax_copy_bandwidth,
    time_calls,
    timing_fields,
)

import tmesim  # noqa: E402

STEPS = 10
FIELDS = len(tmesim.FIELD_NAMES)
COPY_N = 128  # the copy bandwidth's grid at least: 32 fields at 128³ are 256 MiB


def build(n: int, dt: float, reaction: bool, max_stages: int | None = None,
          stiff: bool = True):
    setup = tmesim.tissue(n=n, spacing=20.0, radius=5.0 * n, dt=dt)
    st = setup.stepper
    if max_stages is not None:
        st = dataclasses.replace(st, max_stages=max_stages)
    if not stiff:  # the cells' sub-steps at their positivity limit alone
        st = dataclasses.replace(st, pressure_stiffness=0.0)
    stepper = st if reaction else tmesim.Stepper(
        st.grid, st.table, dt, None, max_stages=st.max_stages, cell_speed=st.cell_speed,
        pressure=st.pressure, pressure_stiffness=st.pressure_stiffness)
    return setup, stepper, setup.problem.inputs(setup.values, 0)


@dataclasses.dataclass(frozen=True)
class OneGroup(tmesim.Stepper):
    """The stepper with only group ``keep``'s transport (none for -1); every group's
    in-place reaction update still runs (``--parts``)."""

    keep: int = -1

    def _kept(self, g) -> bool:
        return self.keep >= 0 and g is self.groups[self.keep]

    def _transport_solutes(self, g, c, params, rates, pinned):
        return super()._transport_solutes(g, c, params, rates, pinned) if self._kept(g) else c

    def _move_cells(self, g, c, params, rates):
        return super()._move_cells(g, c, params, rates) if self._kept(g) else c


def parts(n, dt, repeats, max_stages, pass_s, provenance, out) -> list:
    """``part`` lines of the full step (module docstring)."""
    setup, st, params = build(n, dt, True, max_stages)
    kept = {f.name: getattr(st, f.name) for f in dataclasses.fields(st) if f.init}
    lines, none = [], None
    for keep in range(-1, len(st.groups)):
        stepper = OneGroup(**kept, keep=keep)
        first, ts = time_calls(lambda s=stepper: tmesim.simulate(s, setup.fields, params,
                                                                 STEPS)[0], repeats)
        t = timing_fields(first, ts, STEPS)
        g = stepper.groups[keep]
        name = "none" if keep < 0 else (
            f"{g.method}{'' if g.stages == 1 else f' x{g.stages}'} ({len(g.channels)})")
        if keep < 0:
            none = t["step_s"]
        step_s = t["step_s"] - (0.0 if keep < 0 else none)
        if keep >= 0:  # the spread of the step with the group, not of the difference
            t = {k: v for k, v in t.items() if k not in ("step_s_min", "step_s_max")}
        lines.append(emit({"method": f"part {name}", "N": n, "dt": dt, "dtype": "float32",
                           "group": "" if keep < 0 else stepper.describe()[keep], **t,
                           "step_s": step_s, "with_none_s": t["step_s"],
                           "passes": step_s / pass_s}, provenance, out))
    return lines


def stencil_pass(n: int, fields: int, repeats: int) -> dict:
    """One plain 7-point stencil pass over every field (jnp.pad, edge faces), the unit the
    model step is counted in: a jitted scan of STEPS passes; GB/s counts one read and
    one write of the fields per pass."""
    c = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (fields, n, n, n)), jnp.float32)

    def one(c, _):
        p = jnp.pad(c, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
        lap = (p[:, 2:, 1:-1, 1:-1] + p[:, :-2, 1:-1, 1:-1] + p[:, 1:-1, 2:, 1:-1]
               + p[:, 1:-1, :-2, 1:-1] + p[:, 1:-1, 1:-1, 2:] + p[:, 1:-1, 1:-1, :-2] - 6.0 * c)
        return c + 0.1 * lap, None

    run = jax.jit(lambda c: jax.lax.scan(one, c, None, length=STEPS)[0])
    first, ts = time_calls(lambda: run(c), repeats)
    t = timing_fields(first, ts, STEPS)
    return {**t, "gbps": 2 * c.nbytes / t["step_s"] / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dts", type=float, nargs="+", default=[0.01, 2.0])
    ap.add_argument("--max-stages", type=int, default=None,
                    help="RKL2 stages beyond which the plan solves implicitly (default: the "
                         "stepper's; 1000 gives the RKL2-only plan of before the implicit solver)")
    ap.add_argument("--cells-unstiff", action="store_true",
                    help="also time the full step with the cells' sub-steps at their positivity "
                         "limit alone (the line full-cells-unstiff)")
    ap.add_argument("--parts", action="store_true",
                    help="also time the full step group by group (the part lines)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results.jsonl")
    args = ap.parse_args()
    provenance = {"device": device_description(), "jax": jax.__version__,
                  "commit": git_commit(args.out), "bench": "model"}
    lines = []
    pass_s: dict = {}
    copy: dict = {}
    with open(args.out, "a") as out:
        for n, dt in ((n, dt) for n in args.n for dt in args.dts):
            if n not in pass_s:
                pass_s[n] = stencil_pass(n, FIELDS, args.repeats)
                lines.append(emit({"method": "stencil-pass", "N": n, "fields": FIELDS,
                                   "dtype": "float32", **pass_s[n]}, provenance, out))
                copy[n] = jax_copy_bandwidth(max(n, COPY_N), FIELDS, args.repeats)
                lines.append(emit(copy[n], provenance, out))
            times = {}
            cases = [("transport", False, True), ("full", True, True)]
            if args.cells_unstiff:
                cases.append(("full-cells-unstiff", True, False))
            for name, reaction, stiff in cases:
                setup, stepper, params = build(n, dt, reaction, args.max_stages, stiff)
                fields = setup.fields
                first, ts = time_calls(
                    lambda s=stepper, f=fields, p=params: tmesim.simulate(s, f, p, STEPS)[0],
                    args.repeats)
                times[name] = timing_fields(first, ts, STEPS)
                must_move = 2 * len(setup.table) * n**3 * 4  # every field read and written once
                gbps = must_move / times[name]["step_s"] / 1e9
                result = {"method": name, "N": n, "max_stages": stepper.max_stages,
                          "fields": len(setup.table), "dt": dt, "dtype": "float32",
                          "plan": stepper.describe(), **times[name],
                          "passes": times[name]["step_s"] / pass_s[n]["step_s"],
                          "bytes_must_move": must_move, "gbps": gbps,
                          "fraction_of_copy": gbps / copy[n]["gbps"]}
                lines.append(emit(result, provenance, out))
            reaction = times["full"]["step_s"] - times["transport"]["step_s"]
            lines.append(emit({"method": "reaction", "N": n, "dt": dt, "step_s": reaction,
                               "ratio_to_transport": reaction / times["transport"]["step_s"]},
                              provenance, out))
            if args.parts:
                lines += parts(n, dt, args.repeats, args.max_stages, pass_s[n]["step_s"],
                               provenance, out)
    print()
    for r in lines:
        extra = f"  ratio {r['ratio_to_transport']:.2f}" if "ratio_to_transport" in r else ""
        extra += f"  {r['passes']:.1f} stencil passes" if "passes" in r else ""
        extra += f"  ({r['gbps']:.1f} GB/s)" if "gbps" in r else ""
        extra += (f", {r['fraction_of_copy']:.3f} of the copy bandwidth"
                  if "fraction_of_copy" in r else "")
        print(f"{r['method']:<14} N={r['N']} dt={r.get('dt', '-')!s:<5} "
              f"{1e3 * r['step_s']:8.2f} ms/step{extra}")


if __name__ == "__main__":
    jnp.zeros(1)  # initialise the backend before timing
    main()
