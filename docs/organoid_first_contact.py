"""First contact with data: untreated spheroids with default parameters against published time courses.

Three conditions, each an organoid octant started at the first measured radius:

- EMT6/Ro (Freyer & Sutherland 1986): radius 77 um at day 4.2, to day 23;
- WM983b and WM793b melanoma, 5000 cells seeded (Browning et al. 2021, eLife
  10:e73020): started at the median IncuCyte outer radius of their first
  confocal day (day 3 and day 4), to day 21 and day 24, with the lines'
  parameter sets (``tmesim.CELL_LINES``).

Every 12 h it records the observables experiments report (``tmesim.observables``:
outer, necrotic, arrested and hypoxic radii, minimum pO2, CSC share), writes
JSON and draws docs/organoid_first_contact.png, model against data, with the
misfit in numbers (root-mean-square over the measured times). Documentation,
not calibration: the defaults are not fitted to these data.

Usage:
    python docs/organoid_first_contact.py                 # all three (16³ x 40 um)
    python docs/organoid_first_contact.py --plot-only docs/organoid_first_contact.json
"""

import argparse
import csv
import json
import pathlib
import statistics
import time

import jax
import numpy as np

import tmesim as tm

HERE = pathlib.Path(__file__).parent
DATA = HERE / "data"
SERIES = ("tumor_radius", "necrotic_radius", "arrested_radius", "hypoxic_radius", "min_oxygen",
          "csc_fraction")


def read_csv(name):
    with open(DATA / name) as fh:
        return list(csv.DictReader(fh))


def medians(rows, key, line):
    """{day: median of ``key``} over one line's rows with a value."""
    by = {}
    for r in rows:
        if r["cell_line"] == line and r[key]:
            by.setdefault(float(r["time_day"]), []).append(float(r[key]))
    return {d: statistics.median(v) for d, v in sorted(by.items())}


def data():
    """Measured time courses: {condition: {series: {day: value}}}."""
    emt = read_csv("freyer_sutherland1986_emt6ro_spheroid_growth.csv")
    out = {"EMT6/Ro": {"tumor_radius": {float(r["time_day"]): float(r["diameter_um"]) / 2
                                        for r in emt}}}
    inc = read_csv("browning2021_incucyte_outer_radius.csv")
    conf = read_csv("browning2021_confocal_structure.csv")
    for line in ("WM983b", "WM793b"):
        out[line] = {"tumor_radius": medians(inc, "outer_radius_um", line),
                     "confocal_outer": medians(conf, "outer_radius_um", line),
                     "arrested_radius": medians(conf, "inhibited_radius_um", line),
                     "necrotic_radius": medians(conf, "necrotic_radius_um", line)}
    return out


def conditions(measured):
    first = {line: min(measured[line]["confocal_outer"]) for line in ("WM983b", "WM793b")}
    return [
        ("EMT6/Ro", None, 4.2, 77.0, 23.0),
        *[(line, line.lower(), first[line], measured[line]["tumor_radius"][
            min(measured[line]["tumor_radius"], key=lambda d, f=first[line]: abs(d - f))],
           {"WM983b": 21.0, "WM793b": 24.0}[line]) for line in ("WM983b", "WM793b")],
    ]


def simulate(name, line, day0, radius, day1, n, spacing, dt):
    overrides = tm.CELL_LINES[line][0] if line else None
    setup = tm.organoid(n=n, spacing=spacing, radius=radius, dt=dt, overrides=overrides)
    per = round(720 / dt)  # 12 h
    state = tm.start_state(setup.problem, setup.values)
    out = {"day": [], **{k: [] for k in SERIES}}

    def record(day, fields):
        obs = tm.observables(setup.problem, fields, setup.values)
        out["day"].append(day)
        for k in SERIES:
            out[k].append(float(obs[k]))

    record(day0, state)
    t0 = time.perf_counter()
    for k in range(round((day1 - day0) * 2)):
        sol = tm.solve(setup.problem, setup.values, state, n_steps=per, start=k * per)
        if not sol.ok:
            raise SystemExit(f"{name}: {sol.message(setup.problem)}")
        state = sol.fields
        record(day0 + 0.5 * (k + 1), state)
        print(f"{name} day {out['day'][-1]:5.1f} outer {out['tumor_radius'][-1]:6.1f} necrotic "
              f"{out['necrotic_radius'][-1]:6.1f} arrested {out['arrested_radius'][-1]:6.1f} um, "
              f"min O2 {out['min_oxygen'][-1]:5.1f} [{time.perf_counter() - t0:.0f} s]", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    out["profile_r"] = [float(r) for r in np.arange(0.0, n * spacing, spacing / 2)]
    out["profile"] = {f: [float(v) for v in tm.radial_profile(setup.problem, state, f,
                                                               out["profile_r"])]
                      for f in ("oxygen", "tumor", "csc", "debris")}
    return out


def misfit(model, measured):
    """Root-mean-square model − data (um) over the measured days within the run."""
    days = np.array(model["day"])
    out = {}
    for key, series in measured.items():
        if key not in model:
            continue
        pts = [(d, v) for d, v in series.items() if days[0] <= d <= days[-1]]
        if pts:
            sim = np.interp([d for d, _ in pts], days, model[key])
            out[key] = float(np.sqrt(np.mean((sim - np.array([v for _, v in pts])) ** 2)))
    return out


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = data()
    names = list(result["runs"])
    fig, ax = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4))
    style = {"tumor_radius": ("k", "outer"), "arrested_radius": ("tab:blue", "arrested"),
             "necrotic_radius": ("tab:red", "necrotic"), "hypoxic_radius": ("tab:purple",
                                                                           "hypoxic (< 10 mmHg)")}
    for a, name in zip(np.atleast_1d(ax), names):
        run = result["runs"][name]
        for key, (color, label) in style.items():
            a.plot(run["day"], run[key], "-", color=color, label=f"model: {label}")
            if key in measured[name]:
                d = measured[name][key]
                a.plot(list(d), list(d.values()), "o", color=color, mfc="none", ms=4,
                       label=f"data: {label} (median)")
        fit = ", ".join(f"{k.split('_')[0]} {v:.0f}" for k, v in run["misfit"].items())
        a.set_title(f"{name}\nRMS misfit (um): {fit}", fontsize=9)
        a.set_xlabel("day")
        a.set_ylabel("radius (um)")
        a.legend(fontsize=6)
    fig.suptitle("default parameters, no fit: Freyer & Sutherland 1986 (EMT6/Ro), "
                 "Browning et al. 2021 (WM983b, WM793b; 5000 cells seeded)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--spacing", type=float, default=40.0)
    ap.add_argument("--dt", type=float, default=2.0)
    ap.add_argument("--only", help="one condition (EMT6/Ro, WM983b, WM793b)")
    ap.add_argument("--out", default=str(HERE / "organoid_first_contact"))
    ap.add_argument("--plot-only", metavar="JSON")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(pathlib.Path(args.plot_only).read_text()), args.out + ".png")
        print(f"wrote {args.out}.png")
        return
    measured = data()
    result = {"jax": jax.__version__, "grid": [args.n, args.spacing], "dt": args.dt, "runs": {}}
    for name, line, day0, radius, day1 in conditions(measured):
        if args.only and name != args.only:
            continue
        run = simulate(name, line, day0, radius, day1, args.n, args.spacing, args.dt)
        run["misfit"] = misfit(run, measured[name])
        run["start"] = {"day": day0, "radius_um": radius, "cell_line": line}
        result["runs"][name] = run
        print(name, "misfit (um):", run["misfit"], flush=True)
    pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    plot(result, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
