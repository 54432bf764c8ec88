"""Reading a fit result: its summary in words and its figures."""

from __future__ import annotations

import math
import os

import h5py
import numpy as np

from ._fit import CHI2_95, from_scale


def is_fit_result(path: str) -> bool:
    try:
        with h5py.File(path, "r") as h5:
            return h5.get("meta") is not None and h5["meta"].attrs.get("kind") == "tmesim fit"
    except OSError:
        return False


def _names(ds) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[...]]


def fit_text(path: str) -> str:
    """The fit's state, fitted values with their intervals, identifiability and time."""
    with h5py.File(path, "r") as h5:
        m = h5["meta"].attrs
        ids = _names(h5["parameters/id"])
        lines = [f"{path}: tmesim fit of {m['problem']} ({m['name']})",
                 f"  status {m['status']}, stage {m['stage']}, {float(m['seconds']) / 60:.1f} min"
                 f" ({m['device']}, JAX {m['jax']})"]
        s = h5["starts"]
        value = s["value"][...]
        order = np.argsort(value)
        lines.append(f"  starts: {len(value)}; final NLL "
                     + " ".join(f"{v:.6g}" for v in value[order]))
        if "evaluations" in s:  # results written before this count have none
            lines.append("    iterations " + " ".join(str(k) for k in s["iterations"][...][order])
                         + "; loss-and-gradient evaluations "
                         + " ".join(str(k) for k in s["evaluations"][...][order]))
        if "polish" in h5:
            hist = h5["polish/history"][...]
            n = int(h5["polish/iterations"][0])
            again = int(h5["polish/restarts"][0]) if "restarts" in h5["polish"] else 0
            lines.append(f"  polish: {n} trust-region Newton steps, NLL {hist[0]:.8g} -> "
                         f"{hist[n]:.8g}" + (f" (started again {again} times from a profile "
                                             f"point with a lower NLL)" if again else ""))
        if "summary" in h5:
            g = h5["summary"]
            lines.append(f"  best NLL {float(h5['best/value'][0]):.6g}; " + (
                "95% intervals (profile likelihood; Laplace/Wald):" if ids else
                "nothing estimated: the parameter set of the problem's tables, scored"))
            for i, pid in enumerate(ids):
                lo, hi = g["profile"][i]
                wl, wh = g["wald"][i]
                flag = _names(g["flags"])[i]
                ok = {1: "", 0: "  NOT IDENTIFIABLE", -1: "  identifiability unknown"}[
                    int(g["identifiable"][i])]
                lines.append(f"    {pid} = {g['value'][i]:.6g}  [{lo:.4g}, {hi:.4g}]; "
                             f"Wald [{wl:.4g}, {wh:.4g}]{ok}" + (f" ({flag})" if flag else ""))
            if "closed_form" in h5:
                c = h5["closed_form"]
                lines.append("  noise parameters in closed form at the best point "
                             "(hierarchical): " + ", ".join(
                                 f"{p} = {v:.6g}" for p, v in zip(_names(c["id"]), c["value"])))
            for note in _names(g["notes"]) if "notes" in g else ():
                lines.append(f"  note: {note}")
            lines += _residual_lines(h5["measurements"])
        elif "best" in h5:
            lines.append(f"  best so far NLL {float(h5['best/value'][0]):.6g}: "
                         + ", ".join(f"{p} = {v:.6g}" for p, v in zip(ids, h5["best/linear"])))
    return "\n".join(lines)


def _residual_lines(ms) -> list[str]:
    """Model minus data at the best point, per observable and condition."""
    obs, cond = np.array(_names(ms["observable"])), np.array(_names(ms["condition"]))
    h, y, sigma = ms["simulated"][...], ms["measurement"][...], ms["sigma"][...]
    lines = ["  residuals, model - data (sigma: the noise level on the observable's "
             "transformed scale):"]
    for oid in dict.fromkeys(obs):
        for cid in dict.fromkeys(cond[obs == oid]):
            sel = (obs == oid) & (cond == cid)
            r = h[sel] - y[sel]
            text = (f"    {oid} in {cid}: {sel.sum()} rows, RMS {np.sqrt(np.mean(r ** 2)):.4g}, "
                    f"mean {np.mean(r):+.4g}")
            if np.all(h[sel] > 0) and np.all(y[sel] > 0):
                text += f", RMS log ratio {np.sqrt(np.mean(np.log(h[sel] / y[sel]) ** 2)):.3g}"
            lines.append(text + f"; sigma {np.mean(sigma[sel]):.4g}")
    return lines


def plot_fit(path: str, prefix: str | None = None) -> list[str]:
    """Three PNGs: fit against data per condition, the waterfall of starts, the profiles
    (a problem that estimates nothing, scored: the first alone, its line labelled model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = prefix or os.path.splitext(path)[0]
    written = []
    with h5py.File(path, "r") as h5:
        if "simulated" not in h5:
            raise ValueError(f"{path}: the fit has not finished (stage "
                             f"{h5['meta'].attrs['stage']}): nothing to plot yet")
        ms = h5["measurements"]
        obs = np.array(_names(ms["observable"]))
        cond = np.array(_names(ms["condition"]))
        t = ms["time_min"][...] / 1440.0
        y = ms["measurement"][...]
        conds = list(h5["simulated"])
        oids = sorted(set(obs))
        model = "fit" if len(h5["parameters/id"]) else "model"  # nothing estimated: scored
        fig, axes = plt.subplots(len(oids), len(conds), figsize=(3.6 * len(conds), 2.8 * len(oids)),
                                 squeeze=False)
        for j, cid in enumerate(conds):
            sim = h5["simulated"][cid]
            for i, oid in enumerate(oids):
                ax = axes[i][j]
                sel = (obs == oid) & (cond == cid)
                ax.plot(t[sel], y[sel], "o", ms=3, alpha=0.5, color="0.3", label="data")
                if oid in sim:
                    ax.plot(sim["time_day"][...], sim[oid][...], "-", color="C3", label=model)
                ax.set_title(f"{cid}: {oid}", fontsize=8)
                ax.set_xlabel("day", fontsize=8)
                ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        out = prefix + "_fit.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)

        value = np.sort(h5["starts/value"][...])
        if model == "model":  # one start, no steps: no waterfall
            return written
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        best = value[np.isfinite(value)].min() if np.isfinite(value).any() else 0.0
        ax.plot(np.arange(1, len(value) + 1), value - best + 1e-3, "o-")
        ax.set_yscale("log")
        ax.set_xlabel("start (sorted)")
        ax.set_ylabel("NLL - best + 1e-3")
        ax.set_title("waterfall of starts", fontsize=9)
        fig.tight_layout()
        out = prefix + "_waterfall.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)

        if "profiles" in h5 and len(h5["profiles/points"]):
            pts = h5["profiles/points"][...]
            vals = h5["profiles/value"][...]
            ids = _names(h5["parameters/id"])
            scales = _names(h5["parameters/scale"])
            theta = h5["best/theta"][...]
            nll = float(h5["best/value"][0])
            which = sorted(set(int(i) for i in pts[:, 0]))
            cols = min(3, len(which))
            rows = math.ceil(len(which) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
            for k, i in enumerate(which):
                ax = axes[k // cols][k % cols]
                sel = pts[:, 0] == i
                x = np.concatenate([pts[sel, 2], [theta[i]]])
                v = np.concatenate([vals[sel], [nll]])
                order = np.argsort(x)
                xs = from_scale(x[order], scales[i])
                ax.plot(xs, v[order] - nll, "o-")
                ax.axhline(CHI2_95 / 2, color="C3", lw=0.8, ls="--")
                wide = xs.min() > 0 and xs.max() / xs.min() > 3  # log axis only when it spreads
                ax.set_xscale("log" if scales[i] in ("log", "log10") and wide else "linear")
                if not wide:
                    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
                ax.set_xlabel(ids[i], fontsize=8)
                ax.set_ylabel("NLL - best", fontsize=8)
                ax.tick_params(labelsize=7)
            for k in range(len(which), rows * cols):
                axes[k // cols][k % cols].axis("off")
            fig.tight_layout()
            out = prefix + "_profiles.png"
            fig.savefig(out, dpi=110)
            plt.close(fig)
            written.append(out)
    return written
