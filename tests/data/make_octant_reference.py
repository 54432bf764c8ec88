"""The 3D octant reference series of tests/data/octant_reference*.json (tests/test_radial.py).

    python tests/data/make_octant_reference.py [N SPACING_UM [DTYPE]]

Runs scenarios/untreated_niche.toml (24³ voxels of 30 um, dt 2 min, 10 days)
through ``tmesim.solve`` with every observable saved each half day and writes
the series with the command, git commit and JAX version that made it. With N
and SPACING_UM the same organoid on another octant grid (the same box, a
finer voxel: 36 20 for the discretisation check).
"""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import tmesim
from tmesim._run import build

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main(argv):
    n = int(argv[0]) if argv else 24
    spacing = float(argv[1]) if len(argv) > 1 else 30.0
    dtype = argv[2] if len(argv) > 2 else "float32"
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "tmesim", "kernels"],
                           capture_output=True, text=True).stdout.strip()
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    text = open(os.path.join(ROOT, "scenarios", "untreated_niche.toml")).read()
    sc = tmesim.scenario_from_text(text, "untreated_niche.toml")
    sc.data["grid"]["n"], sc.data["grid"]["spacing_um"] = n, spacing
    sc.data["run"]["dtype"] = dtype
    setup = build(sc).setup
    dt = sc.dt
    days = np.arange(0.0, 10.0 + 1e-9, 0.5)
    steps = np.rint(days * 1440.0 / dt).astype(int)
    t0 = time.perf_counter()
    sol = tmesim.solve(setup.problem, setup.values, n_steps=int(steps[-1]),
                       save=tmesim.SaveAt(jnp.asarray(steps), tmesim.observables))
    saved = jax.tree_util.tree_map(np.asarray, sol.saved)
    seconds = time.perf_counter() - t0
    assert bool(sol.ok), sol.message(setup.problem)
    out = {
        "what": "3D octant organoid of scenarios/untreated_niche.toml, observables each half day",
        "command": "python tests/data/make_octant_reference.py " + " ".join(argv),
        "commit": commit + (" (with uncommitted changes to tmesim/ or kernels/)" if dirty else ""),
        "jax_version": jax.__version__,
        "grid": {"n": n, "spacing_um": spacing}, "dt_min": dt, "dtype": dtype,
        "seconds": round(seconds, 1),
        "days": days.tolist(),
        "observables": {k: np.asarray(v, float).tolist() for k, v in saved.items()},
    }
    name = "octant_reference.json" if (n, spacing) == (24, 30.0) else \
        f"octant_reference_{n}x{spacing:g}um.json"
    with open(os.path.join(HERE, name), "w") as fh:
        json.dump(out, fh, indent=1)
    print(name, f"{seconds:.0f} s", "tumor_radius", saved["tumor_radius"][[0, 10, 20]],
          "necrotic_radius", saved["necrotic_radius"][[0, 10, 20]])


if __name__ == "__main__":
    main(sys.argv[1:])
