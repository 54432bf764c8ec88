"""Reading run files: ``tmesim inspect`` (text) and ``tmesim plot`` (PNG)."""

from __future__ import annotations

import h5py
import numpy as np

from ._scenario import MIN_PER_DAY

DEFAULT_PLOT_FIELDS = ("tumor", "csc", "debris", "oxygen")
DEFAULT_PLOT_OBSERVABLES = ("tumor_radius", "csc_fraction", "hypoxic_fraction", "necrotic_fraction")


def _open(path) -> h5py.File:
    """Open a run file for reading, also while a live run holds it open for writing
    (no file lock: every snapshot the run has flushed is there to read)."""
    try:
        h5 = h5py.File(path, "r", locking=False)
    except OSError as err:
        raise ValueError(f"{path}: cannot open as HDF5 ({err})") from None
    for key in ("meta", "grid", "time", "fields", "observables"):
        if key not in h5:
            h5.close()
            raise ValueError(f"{path}: /{key} missing: not a tmesim run file")
    return h5


def inspect_text(path) -> str:
    """What is in a run file: scenario, versions, grid, fields, times, observables, checkpoint."""
    from ._output import latest_checkpoint

    with _open(path) as h5:
        m = h5["meta"].attrs
        g = h5["grid"].attrs
        t = h5["time"][...] / MIN_PER_DAY
        lines = [f"{path}: {m['name']} "
                 f"({m['status']}{': ' + m['message'] if m.get('message') else ''})",
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
            last = f"  last: min {ds[-1].min():.4g}, max {ds[-1].max():.4g}" if ds.shape[0] else ""
            lines.append(f"    {name:<20} {ds.attrs['units']:<16}{last}")
        lines.append("  observables (at the last snapshot):")
        for name, ds in h5["observables"].items():
            last = f"{ds[-1]:.4g}" if ds.shape[0] else "-"
            lines.append(f"    {name:<26} {last:>10} {ds.attrs['units']:<16} {ds.attrs['meaning']}")
    return "\n".join(lines)


def plot_file(path, png, fields=DEFAULT_PLOT_FIELDS, days=None,
              series=DEFAULT_PLOT_OBSERVABLES) -> str:
    """PNG: mid-plane slices of ``fields`` at ``days`` (default: 3 spread over the run)
    and time courses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with _open(path) as h5:
        t = h5["time"][...] / MIN_PER_DAY
        if len(t) == 0:
            raise ValueError(f"{path}: /time is empty: no snapshot to plot")
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
            a.plot(t, ds[...], "k.-", ms=3)
            a.set_title(f"{series[c]} ({ds.attrs['units']})", fontsize=8)
            a.set_xlabel("day", fontsize=7)
            a.tick_params(labelsize=6)
        plane = "z = 0 mirror plane (through the organoid centre)" if octant else "mid-plane z"
        fig.suptitle(f"{h5['meta'].attrs['name']}: slices in the {plane}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return str(png)
