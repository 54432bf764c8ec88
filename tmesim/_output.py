"""HDF5 trajectories with checkpoints, their XDMF sidecar, and observables.

Layout:
    /meta         attrs: tmesim and JAX versions, device, seed, scenario text and
                  overrides, command line, status ("running", "complete", "failed")
    /grid         attrs: shape, spacing (um), copies (8 for a simulated octant);
                  datasets x, y, z: voxel centres (um)
    /params       one scalar dataset per model parameter (attrs unit, meaning,
                  source, and lower, upper, scale: the bounds the run was built for)
    /time         (T,) snapshot times in min
    /fields/NAME  (T, X, Y, Z), one chunk per snapshot, gzip; attrs units, kind
    /observables/NAME  (T,) time series; attr units, meaning
    /checkpoint/a, /checkpoint/b   two slots, written alternately; each holds
                  the full state (F, X, Y, Z) with attrs step, outputs (snapshots
                  written when it was taken) and seq; resume takes the newest.
Every snapshot and checkpoint is flushed, so a killed run leaves a readable
file with every completed snapshot. Fields are stored as (x, y, z) in C order;
the XDMF sidecar therefore lists dimensions as (X, Y, Z), which ParaView reads
as (z, y, x): ParaView's X axis is tmesim's z (and Z is x).
"""

from __future__ import annotations

import os
import sys
from xml.sax.saxutils import quoteattr

import h5py
import numpy as np

from ._observables import OBSERVABLES
from ._parameters import PARAMETERS


def device_text() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}: {getattr(d, 'device_kind', d)}"


class Output:
    """An HDF5 run file being written (new or resumed)."""

    def __init__(self, path, h5: h5py.File):
        self.path = str(path)
        self.h5 = h5

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, path, scenario, setup, command: str) -> Output:
        import jax

        from . import __version__

        h5 = h5py.File(path, "w")
        meta = h5.create_group("meta")
        meta.attrs.update({
            "tmesim_version": __version__, "jax_version": jax.__version__,
            "device": device_text(), "seed": scenario.data["run"]["seed"],
            "scenario": scenario.text, "scenario_source": scenario.source,
            "overrides": list(scenario.overrides) or [""], "command": command,
            "name": scenario.name, "status": "running", "python": sys.version.split()[0],
        })
        grid = setup.grid
        g = h5.create_group("grid")
        g.attrs.update({"shape": grid.shape, "spacing": grid.spacing,
                        "copies": setup.problem.copies, "units": "um", "dt_min": scenario.dt})
        for a, name in enumerate("xyz"):
            g.create_dataset(name, data=grid.centers(a))
        p = h5.create_group("params")
        bounds = setup.problem.bounds
        for q in PARAMETERS:
            ds = p.create_dataset(q.name, data=float(setup.values["params"][q.name]))
            lower, upper, scale = bounds.get(q.name)
            ds.attrs.update({"unit": q.unit, "meaning": q.meaning, "source": q.source,
                             "lower": lower, "upper": upper, "scale": scale})
        t = h5.create_dataset("time", shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
        t.attrs["units"] = "min"
        fields = h5.create_group("fields")
        shape = grid.shape
        for name in scenario.stored_fields:
            s = setup.table.species[setup.table.index(name)]
            ds = fields.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape,
                                       dtype=np.dtype(setup.values["params"]["o2_uptake"].dtype),
                                       chunks=(1,) + shape, compression="gzip",
                                       compression_opts=4, shuffle=True)
            ds.attrs.update({"units": s.units, "kind": s.kind,
                             "diffusion": float(setup.values["diffusion"].get(name, 0.0)),
                             "decay": float(setup.values["decay"].get(name, 0.0))})
        obs = h5.create_group("observables")
        for name, (unit, meaning) in OBSERVABLES.items():
            ds = obs.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
            ds.attrs.update({"units": unit, "meaning": meaning})
        h5.create_group("checkpoint")
        h5.flush()
        return cls(path, h5)

    @classmethod
    def open(cls, path) -> Output:
        return cls(path, h5py.File(path, "r+"))

    # -- writing ------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return int(self.h5["time"].shape[0])

    def truncate(self, n: int) -> None:
        """Drop snapshots after the first n (those after the checkpoint a resume starts from)."""
        for ds in [self.h5["time"], *self.h5["fields"].values(), *self.h5["observables"].values()]:
            ds.resize(n, axis=0)
        self.h5.flush()

    def snapshot(self, t_min: float, fields: np.ndarray, names, obs: dict) -> None:
        k = self.n_outputs
        for name, ds in self.h5["fields"].items():
            ds.resize(k + 1, axis=0)
            ds[k] = fields[names.index(name)]
        for name, ds in self.h5["observables"].items():
            ds.resize(k + 1, axis=0)
            ds[k] = obs[name]
        t = self.h5["time"]
        t.resize(k + 1, axis=0)
        t[k] = t_min  # last: a snapshot counts once its time is written
        self.h5.flush()
        write_xdmf(self.path, self.h5)

    def checkpoint(self, step: int, fields: np.ndarray) -> None:
        group = self.h5["checkpoint"]
        seqs = {name: int(ds.attrs.get("seq", -1)) for name, ds in group.items()}
        slot = "a" if not seqs else min(("a", "b"), key=lambda s: seqs.get(s, -2))
        if slot not in group:
            group.create_dataset(slot, shape=fields.shape, dtype=fields.dtype)
        ds = group[slot]
        ds.attrs["seq"] = -1  # invalid while being written
        self.h5.flush()
        ds[...] = fields
        ds.attrs.update({"step": step, "outputs": self.n_outputs})
        self.h5.flush()
        ds.attrs["seq"] = max(seqs.values(), default=-1) + 1
        self.h5.flush()

    def set_status(self, status: str, message: str = "") -> None:
        self.h5["meta"].attrs.update({"status": status, "message": message})
        self.h5.flush()

    def close(self) -> None:
        self.h5.close()


def latest_checkpoint(h5: h5py.File):
    """(step, outputs, fields) of the newest complete checkpoint, or None."""
    group = h5.get("checkpoint")
    if group is None:
        return None
    slots = [ds for ds in group.values() if int(ds.attrs.get("seq", -1)) >= 0]
    if not slots:
        return None
    ds = max(slots, key=lambda d: int(d.attrs["seq"]))
    return int(ds.attrs["step"]), int(ds.attrs["outputs"]), ds[...]


# --------------------------------------------------------------------------
def xdmf_path(h5_path) -> str:
    root, _ = os.path.splitext(str(h5_path))
    return root + ".xdmf"


def write_xdmf(h5_path, h5: h5py.File | None = None) -> str:
    """Write (atomically) the XDMF 2 sidecar describing every stored snapshot.

    One temporal collection of uniform grids (3DCoRectMesh, cell-centred
    attributes); each attribute is a hyperslab of /fields/NAME, so the
    sidecar adds no data. ``h5``: the file, if already open. Returns the sidecar's path.
    """
    path = xdmf_path(h5_path)
    href = os.path.basename(str(h5_path))
    if h5 is None:
        with h5py.File(h5_path, "r") as opened:
            return write_xdmf(h5_path, opened)
    times = h5["time"][...]
    shape = tuple(int(n) for n in h5["grid"].attrs["shape"])
    spacing = tuple(float(h) for h in h5["grid"].attrs["spacing"])
    precision = {n: ds.dtype.itemsize for n, ds in h5["fields"].items()}
    dims = " ".join(str(n) for n in shape)
    points = " ".join(str(n + 1) for n in shape)
    lines = ['<?xml version="1.0" ?>', '<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>',
             '<Xdmf Version="2.0">', " <Domain>",
             '  <Grid Name="tmesim" GridType="Collection" CollectionType="Temporal">']
    for k, t in enumerate(times):
        lines += [f'   <Grid Name="t{k}" GridType="Uniform">',
                  f'    <Time Value="{float(t)!r}" />',
                  f'    <Topology TopologyType="3DCoRectMesh" Dimensions="{points}" />',
                  '    <Geometry GeometryType="ORIGIN_DXDYDZ">',
                  '     <DataItem Format="XML" Dimensions="3">0 0 0</DataItem>',
                  '     <DataItem Format="XML" Dimensions="3">'
                  f'{" ".join(map(repr, spacing))}</DataItem>',
                  "    </Geometry>"]
        for name, prec in precision.items():
            lines += [f'    <Attribute Name={quoteattr(name)} '
                      'AttributeType="Scalar" Center="Cell">',
                      f'     <DataItem ItemType="HyperSlab" Dimensions="{dims}" Type="HyperSlab">',
                      '      <DataItem Dimensions="3 4" Format="XML">'
                      f'{k} 0 0 0 1 1 1 1 1 {dims}</DataItem>',
                      f'      <DataItem Dimensions="{len(times)} {dims}" NumberType="Float" '
                      f'Precision="{prec}" Format="HDF">{href}:/fields/{name}</DataItem>',
                      "     </DataItem>", "    </Attribute>"]
        lines.append("   </Grid>")
    lines += ["  </Grid>", " </Domain>", "</Xdmf>", ""]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)
    return path
