"""First contact with data: an untreated organoid with default parameters.

Runs the default organoid (octant, 25 um voxels, dt = 2 min) from a radius of
77 um at day 4 (the EMT6/Ro diameter at day 4.2, Freyer & Sutherland 1986) to
day 23, records outer, hypoxic and necrotic radii every 12 h and the radial
profiles at the end, and draws docs/organoid_first_contact.png against
docs/data (Freyer & Sutherland 1986 EMT6/Ro; Browning et al. 2021 WM793b and
WM983b radii). Usage:
    python docs/organoid_first_contact.py --n 32                 # default parameters
    python docs/organoid_first_contact.py --n 24 --spacing 30 --o2-uptake 500 \
        --out docs/organoid_uptake500                            # a what-if
    python docs/organoid_first_contact.py --plot-only docs/organoid_first_contact.json \
        [docs/organoid_uptake500.json]
Documentation, not calibration.
"""

import argparse
import csv
import json
import pathlib
import time

import jax
import numpy as np

import tmesim as tm

HERE = pathlib.Path(__file__).parent
DATA = HERE / "data"


def equal_volume_radius(mask, grid):
    """Radius (um) of the sphere with the volume of the voxels in ``mask`` (an octant)."""
    return float(tm.equal_volume_radius(np.sum(mask) * grid.voxel_volume * 8))


def measure(f, setup):
    i = setup.table.index
    live = f[i("tumor")] + f[i("csc")]
    body = live + f[i("debris")]
    inside = body > 0.1
    return {
        "outer": equal_volume_radius(inside, setup.grid),
        "hypoxic": equal_volume_radius(inside & (f[i("oxygen")] < 15.0), setup.grid),
        "necrotic": equal_volume_radius(inside & (f[i("debris")] > live), setup.grid),
        "csc_share": float(f[i("csc")].sum() / max(live.sum(), 1e-12)),
        "min_o2": float(f[i("oxygen")].min()),
    }


def radial_profile(f, setup, names, dr=25.0):
    r = np.sqrt(sum(g**2 for g in setup.grid.mesh()))
    bins = np.arange(0.0, r.max() + dr, dr)
    which = np.digitize(r, bins) - 1
    out = {"r": (bins[:-1] + dr / 2).tolist()}
    for name in names:
        v = f[setup.table.index(name)]
        out[name] = [float(v[which == k].mean()) if (which == k).any() else float("nan")
                     for k in range(len(bins) - 1)]
    return out


def read_csv(name):
    with open(DATA / name) as fh:
        return list(csv.DictReader(fh))


def plot(result, path, variant=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array(result["day"])
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    a = ax[0]
    a.plot(t, result["outer"], "k-", label="model: outer radius")
    a.plot(t, result["hypoxic"], "b--", label="model: hypoxic (O2 < 15 mmHg)")
    a.plot(t, result["necrotic"], "r-.", label="model: necrotic (debris > live)")
    if variant is not None:
        tv = np.array(variant["day"])
        a.plot(tv, variant["outer"], "-", color="gray", label=f"{variant['label']}: outer")
        a.plot(tv, variant["necrotic"], "-.", color="orange", label=f"{variant['label']}: necrotic")
    emt = read_csv("freyer_sutherland1986_emt6ro_spheroid_growth.csv")
    a.plot([float(r["time_day"]) for r in emt], [float(r["diameter_um"]) / 2 for r in emt], "ko",
           mfc="none", label="EMT6/Ro radius (Freyer & Sutherland 1986)")
    inc = read_csv("browning2021_incucyte_outer_radius.csv")
    for line, mk in (("WM793b", "s"), ("WM983b", "^")):
        rows = [r for r in inc if r["cell_line"] == line and r["outer_radius_um"]]
        days = sorted({float(r["time_day"]) for r in rows})
        med = [np.median([float(r["outer_radius_um"]) for r in rows if float(r["time_day"]) == d])
               for d in days]
        a.plot(days, med, mk, ms=3, alpha=0.5, label=f"{line} outer radius (Browning 2021, median)")
    a.set_xlabel("day")
    a.set_ylabel("radius (um)")
    a.legend(fontsize=7)
    a.set_title("growth")
    a = ax[1]
    conf = read_csv("browning2021_confocal_structure.csv")
    for line, mk in (("WM793b", "s"), ("WM983b", "^")):
        rows = [r for r in conf if r["cell_line"] == line and r["necrotic_radius_um"]]
        a.plot([float(r["outer_radius_um"]) for r in rows],
               [float(r["necrotic_radius_um"]) for r in rows], mk, ms=3, alpha=0.5,
               label=f"{line} necrotic radius (Browning 2021)")
    a.plot(result["outer"], result["necrotic"], "r-", label="model necrotic radius")
    a.plot(result["outer"], result["hypoxic"], "b--", label="model hypoxic radius")
    if variant is not None:
        a.plot(variant["outer"], variant["necrotic"], "-", color="orange",
               label=f"{variant['label']}: necrotic")
        a.plot(variant["outer"], variant["hypoxic"], "--", color="gray",
               label=f"{variant['label']}: hypoxic")
    a.set_xlabel("outer radius (um)")
    a.set_ylabel("inner radius (um)")
    a.legend(fontsize=7)
    a.set_title("structure")
    a = ax[2]
    prof = result["profile"]
    r = np.array(prof["r"])
    keep = r <= result["grid"][0] * result["grid"][1]
    r, prof = r[keep], {k: np.array(v)[keep] for k, v in prof.items() if k != "r"}
    a.plot(r, np.array(prof["oxygen"]) / 160.0, "b-", label="O2 / 160 mmHg")
    live = np.array(prof["tumor"]) + np.array(prof["csc"])
    a.plot(r, live, "k-", label="live tumor fraction")
    a.plot(r, prof["debris"], "r-", label="debris fraction")
    a.plot(r, np.array(prof["lactate"]) / 1e7, "m:", label="lactate / 10 mM")
    a.plot(r, 10 * np.array(prof["csc"]), "g-", label="CSC fraction x 10")
    a.set_xlabel("distance from centre (um)")
    a.set_title(f"profiles at day {t[-1]:.0f}")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=23.0)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--spacing", type=float, default=25.0)
    ap.add_argument("--dt", type=float, default=2.0)
    ap.add_argument("--o2-uptake", type=float, default=None,
                    help="override o2_uptake (mmHg/min): a what-if, not a fit")
    ap.add_argument("--out", default=str(HERE / "organoid_first_contact"))
    ap.add_argument("--plot-only", nargs="+", metavar="JSON",
                    help="redraw the figure from a default run's JSON (and a variant's)")
    args = ap.parse_args()
    if args.plot_only:
        runs = [json.loads(pathlib.Path(p).read_text()) for p in args.plot_only]
        plot(runs[0], args.out + ".png", runs[1] if len(runs) > 1 else None)
        print(f"wrote {args.out}.png")
        return
    overrides = None if args.o2_uptake is None else {"o2_uptake": args.o2_uptake}
    setup = tm.organoid(n=args.n, spacing=args.spacing, radius=77.0, dt=args.dt,
                        overrides=overrides)
    per = round(720 / args.dt)  # 12 h
    n_out = round((args.days - 4.0) * 2)
    state = tm.start_state(setup.problem, setup.values)
    result = {"day": [4.0], "plan": setup.stepper.describe(), "jax": jax.__version__,
              "grid": [args.n, args.spacing], "dt": args.dt,
              "label": "default" if overrides is None else f"o2_uptake {args.o2_uptake:g} mmHg/min"}
    for k, v in measure(np.asarray(state), setup).items():
        result[k] = [v]
    t0 = time.perf_counter()
    for k in range(n_out):
        sol = tm.solve(setup.problem, setup.values, state, n_steps=per, start=k * per)
        if not sol.ok:
            raise SystemExit(f"organoid_first_contact: {sol.message(setup.problem)}")
        state = sol.fields
        f = np.asarray(state)
        result["day"].append(4.0 + 0.5 * (k + 1))
        for key, v in measure(f, setup).items():
            result[key].append(v)
        print(f"day {result['day'][-1]:5.1f} outer {result['outer'][-1]:6.1f} hypoxic "
              f"{result['hypoxic'][-1]:6.1f} necrotic {result['necrotic'][-1]:6.1f} um, CSC share "
              f"{result['csc_share'][-1]:.3f}, min O2 {result['min_o2'][-1]:.1f} "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    result["profile"] = radial_profile(np.asarray(state), setup,
                                       ["oxygen", "tumor", "csc", "debris", "lactate", "vegf"])
    result["wall_s"] = time.perf_counter() - t0
    pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    plot(result, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
