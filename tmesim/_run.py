"""Running a scenario: build it, solve it in chunks, write snapshots and checkpoints, resume it.

The run is a sequence of calls of the one compiled loop (``tmesim.solve``),
one per snapshot interval; doses, medium changes, radiotherapy and injections
are schedule values applied inside it. Step k always starts at t = k·dt
computed from the integer k, and every chunk runs the same compiled loop
with the same values, so a run resumed from a checkpoint repeats the
uninterrupted run bit for bit. The state stored for step k (snapshot or
checkpoint) is the state after the events of step k (a radiotherapy
fraction at day 3 shows in the day-3 snapshot). Between chunks the host
writes the file and the progress line, and reads the loop's status: a
non-finite value or a negative density stops the run with the field, the
place and the time, keeping every snapshot and the last good checkpoint.
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

from ._geometry import Setup, organoid, tissue
from ._observables import observables
from ._output import Output, latest_checkpoint, write_xdmf
from ._parameters import CELL_LINES
from ._scenario import MIN_PER_DAY, Scenario, ScenarioError, scenario_from_text
from ._solve import solve, start_state


class RunError(RuntimeError):
    """A run that stopped: non-finite or negative state, or an unusable output file."""


@dataclass
class Built:
    scenario: Scenario
    setup: Setup


def build(scenario: Scenario) -> Built:
    """The Setup (problem and values, treatments included) of a scenario."""
    d = scenario.data
    geo, grid = d["geometry"], d["grid"]
    dtype = jnp.float64 if d["run"]["dtype"] == "float64" else jnp.float32
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    common = dict(n=grid["n"], spacing=grid["spacing_um"], radius=geo["radius_um"],
                  csc_fraction=geo["csc_fraction"], dt=scenario.dt,
                  overrides=CELL_LINES.get(d["cell_line"], ({},))[0] | d["parameters"],
                  dtype=dtype, diffusion=d["diffusion"], bounds=scenario.bounds,
                  schedule_values=scenario.schedule())
    try:
        if geo["kind"] == "organoid":
            setup = organoid(octant=geo["octant"], medium=geo["medium"],
                             immune_medium=geo["co_culture"], **common)
        else:
            setup = tissue(vessel_spacing=geo["vessel_spacing_um"],
                           vessel_density=geo["vessel_density"], stroma=geo["stroma"],
                           seed=d["run"]["seed"], periodic=geo["periodic"], **common)
    except (ValueError, KeyError) as err:
        raise ScenarioError(f"{scenario.source}: cannot build the {geo['kind']}: {err}") from None
    return Built(scenario, setup)


@partial(jax.jit, static_argnums=0)
def _observe(problem, fields, values):
    return observables(problem, fields, values)


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
    out = Output.create(path, scenario, built.setup, command)
    fields = start_state(built.setup.problem, built.setup.values)
    _write(out, built, 0, fields, checkpoint=True)
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
    shape = (len(built.setup.table),) + built.setup.grid.shape
    dtype = np.dtype(jnp.result_type(built.setup.values["params"]["o2_uptake"]))
    if fields.shape != shape or fields.dtype != dtype:
        out.close()
        raise RunError(f"{path}: /checkpoint: state of shape {fields.shape} {fields.dtype} does "
                       f"not match the scenario's {shape} {dtype}")
    out.truncate(n_outputs)
    out.set_status("running")
    write_xdmf(out.path, out.h5)
    return _loop(out, built, step, jnp.asarray(fields), progress)


def _write(out: Output, built: Built, step: int, fields, checkpoint: bool) -> None:
    problem, values = built.setup.problem, built.setup.values
    obs = {k: float(v) for k, v in _observe(problem, fields, values).items()}
    f = np.asarray(fields)
    out.snapshot(step * built.scenario.dt, f, list(built.setup.table.names), obs)
    if checkpoint:
        out.checkpoint(step, f)


def _loop(out: Output, built: Built, step: int, fields, progress) -> str:
    sc = built.scenario
    problem, values = built.setup.problem, built.setup.values
    total, every, ckpt = sc.total_steps, sc.output_steps, sc.checkpoint_steps
    show = Progress(total, step, progress)
    try:
        while step < total:
            sol = solve(problem, values, fields, n_steps=every, start=step)
            if not bool(sol.ok):
                raise RunError(sol.message(problem))
            fields, step = sol.fields, step + every
            _write(out, built, step, fields, checkpoint=step % ckpt == 0 or step == total)
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
