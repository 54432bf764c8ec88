"""Reading run files: ``tmesim inspect`` (text) and ``tmesim plot`` (PNG)."""

from __future__ import annotations

import numpy as np

from ._output import open_run, read_status, reading, sidecar_tag, snapshot_count
from ._scenario import MIN_PER_DAY

DEFAULT_PLOT_FIELDS = ("tumor", "csc", "debris", "oxygen")
DEFAULT_PLOT_OBSERVABLES = ("tumor_radius", "csc_fraction", "hypoxic_fraction", "necrotic_fraction")


def inspect_text(path) -> str:
    """What is in a run file (scenario, versions, grid, fields, times, observables,
    checkpoint) or a fit result (``tmesim.fit_text``), as ``tmesim inspect`` prints it."""
    from ._fitplot import fit_text, is_fit_result
    from ._output import latest_checkpoint

    if is_fit_result(path):
        return fit_text(path)

    with open_run(path) as h5, reading(path):
        m = h5["meta"].attrs
        g = h5["grid"].attrs
        n = snapshot_count(h5)
        t = h5["time"][:n] / MIN_PER_DAY
        status, message = read_status(h5)
        lines = [f"{path}: {m['name']} "
                 f"({status}{': ' + message if message else ''})",
                 f"  written by tmesim {m['tmesim_version']}, JAX {m['jax_version']}, "
                 f"on {m['device']}; seed {m['seed']}",
                 f"  scenario from {m['scenario_source']}"
                 + (f" with --set {' '.join(o for o in m['overrides'] if o)}"
                    if any(m["overrides"]) else ""),
                 f"  command: {m['command']}",
                 f"  grid {' x '.join(map(str, g['shape']))} voxels of "
                 f"{' x '.join(f'{h:g}' for h in g['spacing'])} um"
                 + (" (one octant of the organoid)" if int(g["copies"]) == 8 else "")
                 + f", dt {g['dt_min']:g} min",
                 f"  {len(t)} snapshots" + (f", day {t[0]:g} to {t[-1]:g}" if len(t) else "")]
        ck = latest_checkpoint(h5)
        if ck is not None:
            lines.append(f"  checkpoint at day {ck[0] * g['dt_min'] / MIN_PER_DAY:g} "
                         f"(step {ck[0]}; resume with: tmesim resume {path})")
        lines.append(f"  fields ({len(h5['fields'])}), shape (time, x, y, z):")
        for name, ds in h5["fields"].items():
            last = f"  last: min {ds[n - 1].min():.4g}, max {ds[n - 1].max():.4g}" if n else ""
            lines.append(f"    {name:<20} {ds.attrs['units']:<16}{last}")
        lines.append("  observables (at the last snapshot):")
        for name, ds in h5["observables"].items():
            last = f"{ds[n - 1]:.4g}" if n else "-"
            lines.append(f"    {name:<26} {last:>10} {ds.attrs['units']:<16} {ds.attrs['meaning']}")
    return "\n".join(lines)


def plot_file(path, png, fields=None, days=None,
              series=DEFAULT_PLOT_OBSERVABLES) -> str:
    """PNG: mid-plane slices of ``fields`` (default: the default fields that were stored)
    at ``days`` (default: 3 spread over the run; days outside it are refused) and time
    courses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open_run(path) as h5, reading(path):
        n = snapshot_count(h5)  # a live run's file: only the complete snapshots
        t = h5["time"][:n] / MIN_PER_DAY
        if n == 0:
            raise ValueError(f"{path}: no complete snapshot to plot yet")
        if fields is None:  # the defaults that were stored, else the first stored fields
            fields = tuple(f for f in DEFAULT_PLOT_FIELDS if f in h5["fields"]) or \
                tuple(h5["fields"])[:len(DEFAULT_PLOT_FIELDS)]
        for name in fields:
            if name not in h5["fields"]:
                raise ValueError(f"{path}: /fields/{name} not stored "
                                 f"(stored: {', '.join(h5['fields'])})")
        for name in series:
            if name not in h5["observables"]:
                raise ValueError(f"{path}: /observables/{name} unknown "
                                 f"(known: {', '.join(h5['observables'])})")
        if days is None:
            picks = sorted({0, len(t) // 2, len(t) - 1})
        else:
            half = 0.5 * (t[1] - t[0]) if n > 1 else 0.0
            outside = [d for d in days if not t[0] - half <= d <= t[-1] + half]
            if outside:
                raise ValueError(f"{path}: --days {','.join(f'{d:g}' for d in outside)}: "
                                 f"outside the snapshots stored, day {t[0]:g} to {t[-1]:g}")
            picks = [int(np.argmin(np.abs(t - d))) for d in days]
        octant = int(h5["grid"].attrs["copies"]) == 8
        spacing = h5["grid"].attrs["spacing"]
        shape = h5["grid"].attrs["shape"]
        zk = 0 if octant else shape[2] // 2
        extent = (0, shape[1] * spacing[1], 0, shape[0] * spacing[0])
        rows = len(fields) + 1
        cols = max(len(picks), len(series))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
        for r, name in enumerate(fields):
            ds = h5["fields"][name]
            vmax = max(float(np.max(ds[k, :, :, zk])) for k in picks) or 1.0
            for c in range(cols):
                a = axes[r, c]
                if c >= len(picks):
                    a.axis("off")
                    continue
                im = a.imshow(ds[picks[c], :, :, zk], origin="lower", extent=extent,
                              vmin=0.0, vmax=vmax, cmap="viridis")
                a.set_title(f"{name} ({ds.attrs['units']}), day {t[picks[c]]:.1f}", fontsize=8)
                a.set_xlabel("y (um)", fontsize=7)
                a.set_ylabel("x (um)", fontsize=7)
                a.tick_params(labelsize=6)
                fig.colorbar(im, ax=a, shrink=0.8).ax.tick_params(labelsize=6)
        for c in range(cols):
            a = axes[-1, c]
            if c >= len(series):
                a.axis("off")
                continue
            ds = h5["observables"][series[c]]
            a.plot(t, ds[:n], "k.-", ms=3)
            a.set_title(f"{series[c]} ({ds.attrs['units']})", fontsize=8)
            a.set_xlabel("day", fontsize=7)
            a.tick_params(labelsize=6)
        plane = "z = 0 mirror plane (through the organoid centre)" if octant else "mid-plane z"
        fig.suptitle(f"{h5['meta'].attrs['name']}: slices in the {plane}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110, metadata={"Source": sidecar_tag(path)})
    plt.close(fig)
    return str(png)
