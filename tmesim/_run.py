"""Running a scenario: build it, step it, write snapshots and checkpoints, resume it.

The run is a sequence of jit-compiled advances between breakpoints (snapshot
times and dose events). Step k always starts at t = k·dt computed from the
integer k, and every advance runs the same compiled loop body, so a run
resumed from a checkpoint repeats the uninterrupted run bit for bit.
Convention: the state stored for step k (snapshot or checkpoint) is the
state after the events of step k (a radiotherapy fraction at day 3 shows in
the day-3 snapshot).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ._model import CELLS, organoid, radiotherapy, tissue
from ._output import Output, latest_checkpoint, observables, write_xdmf
from ._scenario import MIN_PER_DAY, Scenario, ScenarioError, scenario_from_text
from ._treatment import dosing_params, drug_levels, inject


class RunError(RuntimeError):
    """A run that stopped: non-finite or negative state, or an unusable output file."""


@dataclass
class Built:
    scenario: Scenario
    setup: object  # tmesim.Setup
    params: dict
    copies: int
    injection_site: np.ndarray  # where injected cells go (mean 1 over its support)


def build(scenario: Scenario) -> Built:
    """The Setup (grid, species, stepper with dosing, parameters, initial fields) of a scenario."""
    d = scenario.data
    geo, grid = d["geometry"], d["grid"]
    dtype = jnp.float64 if d["run"]["dtype"] == "float64" else jnp.float32
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    common = dict(n=grid["n"], spacing=grid["spacing_um"], radius=geo["radius_um"],
                  csc_fraction=geo["csc_fraction"], dt=scenario.dt, overrides=d["parameters"],
                  dtype=dtype, diffusion=d["diffusion"], forcing=drug_levels)
    try:
        if geo["kind"] == "organoid":
            setup = organoid(octant=geo["octant"], medium=geo["medium"],
                             immune_medium=geo["co_culture"], **common)
            copies = 8 if geo["octant"] else 1
        else:
            setup = tissue(vessel_spacing=geo["vessel_spacing_um"],
                           vessel_density=geo["vessel_density"], stroma=geo["stroma"],
                           seed=d["run"]["seed"], periodic=geo["periodic"], **common)
            copies = 1
    except (ValueError, KeyError) as err:
        raise ScenarioError(f"{scenario.source}: cannot build the {geo['kind']}: {err}") from None
    params = dict(setup.params)
    params["dosing"] = dosing_params(scenario.dosing(), dtype)
    f = np.asarray(setup.fields)
    i = setup.table.index
    if geo["kind"] == "organoid":
        site = (f[i("tumor")] + f[i("csc")] < 0.1).astype(float)  # the medium
    else:
        site = f[i("vessel")]
    site = site / max(site.mean(), 1e-30)
    return Built(scenario, setup, params, copies, site)


@partial(jax.jit, static_argnames=("stepper",))
def _advance(stepper, fields, params, k0, n):
    """n steps from step k0 (traced integers: one compiled loop for every advance)."""
    def body(j, blocks):
        t = (k0 + j).astype(fields.dtype) * stepper.dt
        return stepper.step_blocks(blocks, params, t)

    return stepper.merge(jax.lax.fori_loop(0, n, body, stepper.split(fields)))


def _apply_events(built: Built, fields, events) -> jax.Array:
    table = built.setup.table
    for _, kind, item in events:
        if kind == "radiotherapy":
            fields = radiotherapy(fields, table, built.params, item["dose_gy"])
        else:
            fields = inject(fields, table, item["field"], item["amount"], built.injection_site)
    return fields


def _check_state(fields: np.ndarray, names, day: float) -> None:
    bad = ~np.isfinite(fields)
    if bad.any():
        which = sorted({names[c] for c in np.nonzero(bad)[0]})
        raise RunError(f"non-finite values (NaN or inf) in {', '.join(which)} at day {day:g}")
    cells = [names.index(c) for c in CELLS]
    low = fields[cells].min()
    if low < -1e-6:
        c = cells[int(np.argmin(fields[cells].min(axis=(1, 2, 3))))]
        raise RunError(f"negative density {low:.3g} in {names[c]} at day {day:g}")


class Progress:
    """Elapsed time and ETA on stderr, at most every ``every`` seconds
    (default: $TMESIM_PROGRESS_SECONDS, else 2)."""

    def __init__(self, total_steps: int, first_step: int, stream=sys.stderr, every=None):
        if every is None:
            every = float(os.environ.get("TMESIM_PROGRESS_SECONDS", 2.0))
        self.total, self.first, self.stream, self.every = total_steps, first_step, stream, every
        self.start = time.perf_counter()
        self.last = -math.inf

    def __call__(self, step: int, dt: float, final: bool = False) -> None:
        now = time.perf_counter()
        if self.stream is None or (now - self.last < self.every and not final):
            return
        self.last = now
        elapsed = now - self.start
        done = step - self.first
        left = self.total - step
        eta = f"{_clock(elapsed / done * left)}" if done > 0 else "?"
        print(f"  day {step * dt / MIN_PER_DAY:7.2f} of {self.total * dt / MIN_PER_DAY:g} "
              f"({100 * step / self.total:3.0f}%)  elapsed {_clock(elapsed)}  ETA {eta}",
              file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_scenario(scenario: Scenario, path, command: str = "", progress=sys.stderr) -> str:
    """Run a scenario from the start, writing ``path`` (HDF5) and its XDMF sidecar.

    ``command`` is recorded in /meta; ``progress``: a stream for progress lines,
    or None. Returns the path once the file is complete and closed.
    """
    built = build(scenario)
    out = Output.create(path, scenario, built.setup, built.copies, command)
    fields = _apply_events(built, built.setup.fields,
                           [e for e in scenario.events() if e[0] == 0])
    _write(out, built, 0, np.asarray(fields), checkpoint=True)
    return _loop(out, built, 0, fields, progress)


def resume(path, progress=sys.stderr) -> str:
    """Continue the run in ``path`` from its newest checkpoint (killed or finished).

    Returns the path once the file is complete and closed.
    """
    try:
        out = Output.open(path)
    except OSError as err:
        raise RunError(f"{path}: cannot open the run file ({err})") from None
    try:
        meta = out.h5["meta"].attrs
        overrides = tuple(o for o in meta["overrides"] if o)
        scenario = scenario_from_text(str(meta["scenario"]), f"{path}:/meta/scenario", overrides)
        state = latest_checkpoint(out.h5)
        if state is None:
            raise RunError(f"{path}: /checkpoint: no complete checkpoint to resume from")
    except KeyError as err:
        out.close()
        raise RunError(f"{path}: not a tmesim run file (missing {err})") from None
    except Exception:
        out.close()
        raise
    step, n_outputs, fields = state
    built = build(scenario)
    if fields.shape != built.setup.fields.shape or fields.dtype != built.setup.fields.dtype:
        out.close()
        raise RunError(f"{path}: /checkpoint: state of shape {fields.shape} {fields.dtype} does "
                       f"not match the scenario's {built.setup.fields.shape} "
                       f"{built.setup.fields.dtype}")
    out.truncate(n_outputs)
    out.set_status("running")
    write_xdmf(out.path, out.h5)
    return _loop(out, built, step, jnp.asarray(fields), progress)


def _write(out: Output, built: Built, step: int, f: np.ndarray, checkpoint: bool) -> None:
    sc = built.scenario
    names = list(built.setup.table.names)
    out.snapshot(step * sc.dt, f, names,
                 observables(f, names, built.setup.grid, built.copies, built.params))
    if checkpoint:
        out.checkpoint(step, f)


def _loop(out: Output, built: Built, step: int, fields, progress) -> str:
    sc = built.scenario
    names = list(built.setup.table.names)
    total, every, ckpt = sc.total_steps, sc.output_steps, sc.checkpoint_steps
    events = sc.events()
    stops = sorted({s for s in range(every, total + 1, every)}
                   | {e[0] for e in events if step < e[0] <= total})
    stops = [s for s in stops if s > step]
    stepper = built.setup.stepper
    show = Progress(total, step, progress)
    try:
        for stop in stops:
            fields = _advance(stepper, fields, built.params, jnp.int32(step),
                              jnp.int32(stop - step))
            step = stop
            fields = _apply_events(built, fields, [e for e in events if e[0] == step])
            if step % every == 0 or step == total:
                f = np.asarray(fields)
                _check_state(f, names, step * sc.dt / MIN_PER_DAY)
                _write(out, built, step, f, checkpoint=step % ckpt == 0 or step == total)
            show(step, sc.dt, final=step == total)
    except RunError as err:
        out.set_status("failed", str(err))
        out.close()
        raise RunError(f"{err}; the file keeps every snapshot before it and the last good "
                       f"checkpoint") from None
    except KeyboardInterrupt:
        out.set_status("interrupted", f"at day {step * sc.dt / MIN_PER_DAY:g}")
        out.close()
        raise
    out.set_status("complete")
    out.close()
    return out.path
