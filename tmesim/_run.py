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

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ._devices import each_process, first_process, select_devices, whole
from ._geometry import (
    MediumLayerWarning,
    Setup,
    layer_cut,
    medium_faces,
    organoid,
    spheroid,
    tissue,
)
from ._observables import OBSERVABLES, observables
from ._output import (
    Output,
    OutputError,
    latest_checkpoint,
    open_run,
    png_path,
    reading,
    sidecar_of,
    xdmf_path,
)
from ._parameters import CELL_LINES
from ._scenario import MIN_PER_DAY, Scenario, ScenarioError, scenario_from_text
from ._solve import Status, solve, start_state
from ._stepper import split_grid


class RunError(RuntimeError):
    """A run that stopped: non-finite or negative state, or an unusable output file."""


@dataclass
class Built:
    scenario: Scenario
    setup: Setup


def build(scenario: Scenario, split: bool = True) -> Built:
    """The Setup (problem and values, treatments included) of a scenario; with ``split``,
    its grid in slabs over ``run.devices`` (a fit's runs are not split: its batches are,
    over ``[fit] devices``)."""
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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", MediumLayerWarning)
                setup = organoid(octant=geo["octant"], medium=geo["medium"],
                                 immune_medium=geo["co_culture"], **common)
            for w in caught:  # name the scenario file
                warnings.warn(f"{scenario.source}: {w.message}", w.category, stacklevel=2)
        elif geo["kind"] == "spheroid":
            setup = spheroid(medium=geo["medium"], immune_medium=geo["co_culture"], **common)
        else:
            setup = tissue(vessel_spacing=geo["vessel_spacing_um"],
                           vessel_density=geo["vessel_density"], stroma=geo["stroma"],
                           seed=d["run"]["seed"], periodic=geo["periodic"], **common)
    except (ValueError, KeyError) as err:
        raise ScenarioError(f"{scenario.source}: cannot build the {geo['kind']}: {err}") from None
    if not split:
        return Built(scenario, setup)
    where = f"{scenario.source}: run.devices"
    try:
        devices = select_devices(d["run"]["devices"], where)
        if devices is not None:  # the grid in slabs along x, one per device
            stepper = split_grid(setup.problem.stepper, devices)
            setup = replace(setup, problem=replace(setup.problem, stepper=stepper))
    except ValueError as err:
        raise ScenarioError(str(err) if str(err).startswith(where) else f"{where}: {err}") \
            from None
    return Built(scenario, setup)


@partial(jax.jit, static_argnums=0)
def _observe(problem, fields, values):
    return observables(problem, fields, values)


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM (see ``stop_on_signals``): its file, if it has one,
    was closed with status "interrupted" and resumes with ``tmesim resume``."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


_STOP: list[int] = []  # signals received since stop_on_signals was installed
_WORKER: ThreadPoolExecutor | None = None
_COMPILE_SECONDS = [0.0]  # time JAX spent tracing, lowering and compiling, all threads


def _count_compile(event: str, duration: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):
        _COMPILE_SECONDS[0] += duration


jax.monitoring.register_event_duration_secs_listener(_count_compile)


@contextlib.contextmanager
def stop_on_signals():
    """Within it, SIGINT and SIGTERM stop a run cleanly (the command line uses this).

    A signal only records itself; the run acts on it between two writes of its
    file (never inside one) or, while JAX computes or compiles on the worker
    thread, within 0.1 s: it closes the file with status "interrupted" and
    raises ``Interrupted``. The previous handlers come back on leaving. Off the
    main thread (where Python cannot take signals) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _STOP.append(signum)

    _STOP.clear()
    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _STOP.clear()
        for s, h in before.items():
            signal.signal(s, h)


def _check_stop() -> None:
    if _STOP:
        name = signal.Signals(_STOP[0]).name
        raise Interrupted(_STOP[0], f"stopped by {name}")


def _compute(fn, *args):
    """``fn(*args)`` on a worker thread while this thread waits, polling for a stop
    request: a signal during a compile of minutes is acted on at once, and the
    HDF5 writes stay on this thread, between computations. In a job of several processes
    it computes here, and a signal waits for the next ``_together``: the processes must
    stop at the same point."""
    global _WORKER
    if jax.process_count() > 1:
        return fn(*args)
    _check_stop()
    if _WORKER is None:
        _WORKER = ThreadPoolExecutor(1, thread_name_prefix="tmesim-compute")
    future = _WORKER.submit(fn, *args)
    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            _check_stop()


def _together(error: BaseException | None = None, signals: bool = True) -> None:
    """Raise ``error`` (this process's), else act on a signal (``signals``). In a job of
    several processes (``jax.distributed``) every process calls this at the same point
    and they agree first: an error or a signal on any process stops every one (the
    others with ``RunError`` and ``Interrupted`` respectively)."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        if signals:
            _check_stop()
        return
    flags = each_process([_STOP[0] if _STOP and signals else 0, error is not None])
    if error is not None:
        raise error
    if flags[:, 1].any():
        raise RunError(f"process {int(np.argmax(flags[:, 1]))} of the job stopped with an "
                       "error (see its messages)")
    if flags[:, 0].any():
        _STOP[:] = [int(flags[flags[:, 0] > 0, 0][0])]
        _check_stop()


def agreed(fn, *args):
    """``fn(*args)``; in a job of several processes, an error on any process is raised on
    every one (``_together``), so that none goes on alone."""
    try:
        result, error = fn(*args), None
    except Exception as err:  # noqa: BLE001 -- raised again by _together
        result, error = None, err
    _together(error, signals=False)
    return result


class _Elsewhere:
    """The run file as the processes of a job other than process 0 see it: process 0
    writes it, so each writing call is nothing here."""

    def __init__(self, path):
        self.path = str(path)

    def _nothing(self, *args, **kwargs) -> None:
        return None

    snapshot = checkpoint = publish = discard = set_status = close = _nothing


class Progress:
    """Elapsed time and ETA on stderr, at most every ``every`` seconds
    (default: $TMESIM_PROGRESS_SECONDS, else 2). The ETA leaves out the time JAX
    spent compiling, so the first lines are not inflated by the compile."""

    def __init__(self, total_steps: int, first_step: int, stream=sys.stderr, every=None):
        if every is None:
            every = float(os.environ.get("TMESIM_PROGRESS_SECONDS", 2.0))
        self.total, self.first, self.stream, self.every = total_steps, first_step, stream, every
        self.start = time.perf_counter()
        self.compile0 = _COMPILE_SECONDS[0]
        self.last = -math.inf

    def note(self, text: str) -> None:
        self.stream = tell(self.stream, f"  {text}")

    def __call__(self, step: int, dt: float, final: bool = False) -> None:
        now = time.perf_counter()
        if self.stream is None or (now - self.last < self.every and not final):
            return
        self.last = now
        elapsed = now - self.start
        compiling = _COMPILE_SECONDS[0] - self.compile0
        done = step - self.first
        left = self.total - step
        eta = f"{_clock(max(elapsed - compiling, 0.0) / done * left)}" if done > 0 else "?"
        days = f"{step * dt / MIN_PER_DAY:7.2f} of {self.total * dt / MIN_PER_DAY:g}"
        self.stream = tell(
            self.stream, f"  day {days} ({100 * step / self.total:3.0f}%)  elapsed "
            f"{_clock(elapsed)}{f' (compiling {_clock(compiling)})' if compiling >= 1 else ''}"
            f"  ETA {eta}")


def tell(stream, text: str):
    """Print ``text`` on ``stream`` (None: nowhere) and return the stream, or None when it
    cannot take it (its reader gone, a full disk): progress is best effort, and the work
    goes on without it (in a job of several processes, a progress line failing on process
    0 alone must not stop it where the others wait for it)."""
    if stream is None:
        return None
    try:
        print(text, file=stream, flush=True)
        return stream
    except (OSError, ValueError):
        return None


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _busy(path: str) -> bool:
    """Whether another process holds ``path`` open through HDF5 (its file lock, an
    flock; not seen where HDF5_USE_FILE_LOCKING=FALSE turned HDF5's locks off)."""
    try:
        import fcntl
    except ImportError:  # no flock: HDF5's own lock still refuses a second writer
        return False
    try:
        with open(path, "rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _check_target(path: str, overwrite: bool) -> None:
    """Refuse to write ``path`` (and its sidecars) where that would destroy something:
    an existing file without ``overwrite``, a file another process is writing, or a
    sidecar name taken by something that is not this run file's sidecar."""
    sidecars = (xdmf_path(path), png_path(path))
    present = [p for p in (path, *sidecars) if os.path.exists(p)]
    if present and not overwrite:
        hint = f", or 'tmesim resume {path}' to continue it" if os.path.exists(path) else ""
        raise OutputError(f"{', '.join(present)} exist{'s' if len(present) == 1 else ''}; "
                          f"pass --overwrite to replace {'it' if len(present) == 1 else 'them'}"
                          f"{hint}")
    if os.path.exists(path) and _busy(path):
        raise OutputError(f"{path}: another process has the file open (a run still going?); "
                          "it was not touched")
    for p in sidecars:
        if os.path.exists(p) and not sidecar_of(p, path):
            raise OutputError(f"{p}: exists and is not the sidecar of {os.path.basename(path)} "
                              "(another run's, or not tmesim's); it was not touched: move it, "
                              "or write the run elsewhere with -o")


def run_scenario(scenario: Scenario, path, command: str = "", progress=sys.stderr,
                 overwrite: bool = False) -> str:
    """Run a scenario from the start, writing ``path`` (HDF5) and its XDMF sidecar.

    ``command`` is recorded in /meta; ``progress``: a stream for progress lines,
    or None. An existing ``path`` (or sidecar) is refused unless ``overwrite``,
    and never replaced while another process has it open. The file is built
    under a temporary name and takes ``path`` once it holds the first
    checkpoint, so a run that fails or is stopped before that leaves any
    previous file as it was. Returns the path once the file is complete and closed.
    """
    path = str(path)
    if scenario.data["geometry"]["kind"] == "spheroid":
        raise ScenarioError(
            f"{scenario.source}: geometry.kind = \"spheroid\" (a radially symmetric organoid) "
            "is for tmesim.solve and calibration only: a run file stores 3D fields (x, y, z). "
            "Run the same organoid in 3D with kind = \"organoid\", or build the spheroid with "
            "tmesim.spheroid(...) and advance it with tmesim.solve")
    writes, error = first_process(), None
    try:
        if writes:
            _check_target(path, overwrite)
        built = _compute(build, scenario)
        fields = _compute(start_state, built.setup.problem, built.setup.values)
        obs, host = _compute(_observe_host, built, fields)
        slots = scenario.total_steps // scenario.output_steps + 1
        out = Output.create(path, scenario, built.setup, command, slots) if writes \
            else _Elsewhere(path)
        try:
            _write(out, built, 0, host, obs, checkpoint=True)
            if writes and os.path.exists(path) and (not overwrite or _busy(path)):
                raise OutputError(f"{path}: another run started writing it meanwhile; "
                                  "it was not touched")
            if jax.process_count() == 1:
                _check_stop()  # the last moment a signal leaves no file behind
            out.publish()
        except BaseException:
            out.discard()
            raise
    except Interrupted as err:
        raise Interrupted(err.signum, f"{err} before the first snapshot; {path} was not "
                          "written") from None
    except Exception as err:  # noqa: BLE001 -- raised again by _together, on every process
        error = err
    _together(error, signals=False)  # a job's processes start the loop together, or none
    return _loop(out, built, 0, fields, progress if writes else None)


def resume(path, progress=sys.stderr, devices: int | None = None) -> str:
    """Continue the run in ``path`` from its newest checkpoint (killed or finished).

    Writes nothing until the file, its scenario and its checkpoint are checked;
    the file's space was reserved when it was created, so a full disk does not
    stop a resume. ``devices``: split the grid over this many devices (0: all),
    whatever the run used before (default: the run's ``run.devices``); the
    checkpoint holds whole fields, so any count that divides the grid resumes it.
    Returns the path once the file is complete and closed.
    """
    path = str(path)
    # every process reads the file before process 0 opens it for writing
    built, step, n_outputs, fields = agreed(_checkpoint_of, path, devices)
    out = agreed(_reopen, path, n_outputs)
    return _loop(out, built, step, fields, progress if first_process() else None)


def _checkpoint_of(path: str, devices: int | None):
    """(built, step, outputs, fields) of the run in ``path``, checked (read without a lock)."""
    h5 = open_run(path)
    try:
        with reading(path):
            meta = h5["meta"].attrs
            overrides = tuple(str(o) for o in meta["overrides"] if o)
            if devices is not None:
                overrides += (f"run.devices={int(devices)}",)
            stored = meta.get("parameters_file")  # absent in files from before the key
            scenario = scenario_from_text(
                str(meta["scenario"]), f"{path}:/meta/scenario", overrides,
                None if stored is None else (f"{path}:/meta/parameters_file", str(stored)))
            state = latest_checkpoint(h5)
            if state is None:
                raise RunError(f"{path}: /checkpoint: no complete checkpoint to resume from")
            step, n_outputs, fields = state
            built = _compute(build, scenario)
            shape = (len(built.setup.table),) + built.setup.grid.shape
            dtype = np.dtype(jnp.result_type(built.setup.values["params"]["o2_uptake"]))
            slots = scenario.total_steps // scenario.output_steps + 1
            names = (set(h5["fields"]), set(h5["observables"]))
            if names != (set(scenario.stored_fields), set(OBSERVABLES)):
                raise RunError(f"{path}: /fields and /observables hold other names than this "
                               "tmesim writes for its scenario (a file of another version?)")
            if (fields.shape != shape or fields.dtype != dtype
                    or h5["time"].shape != (slots,) or not 0 < n_outputs <= slots
                    or step != (n_outputs - 1) * scenario.output_steps):
                raise RunError(f"{path}: /checkpoint: state of shape {fields.shape} "
                               f"{fields.dtype} at step {step} after {n_outputs} snapshots does "
                               f"not match the scenario's {shape} {dtype} with {slots} "
                               "snapshots")
    finally:
        h5.close()
    return built, step, n_outputs, fields


def _reopen(path: str, n_outputs: int):
    """The run file opened for writing (locked: refused while another process writes it),
    cut back to its checkpoint's snapshots; ``_Elsewhere`` but on the job's process 0."""
    if not first_process():
        return _Elsewhere(path)
    out = Output.open(path)
    try:
        out.reserve()  # a copy may have lost the reserved room: refuse before writing
        out.truncate(n_outputs)
        out.set_status("running")
        out.sidecar()
    except BaseException:
        out.close()
        raise
    return out


def _observe_host(built: Built, fields):
    """Observables (floats) and the fields as a host array, on the worker thread (a job's
    fields gathered from its processes)."""
    problem, values = built.setup.problem, built.setup.values
    obs = {k: float(v) for k, v in _observe(problem, fields, values).items()}
    return obs, whole(fields)


def _write(out: Output, built: Built, step: int, host, obs, checkpoint: bool) -> None:
    out.snapshot(step * built.scenario.dt, host, list(built.setup.table.names), obs)
    if checkpoint:
        out.checkpoint(step, host)


def _chunk(problem, values, fields, every, step, built):
    sol = solve(problem, values, fields, n_steps=every, start=step)
    if not bool(sol.ok):
        return sol, None, None
    obs, host = _observe_host(built, sol.fields)
    return sol, obs, host


def _layer_reach(built: Built):
    """(layer, medium faces' distance) of a 3D organoid whose box holds its radius and
    unstirred layer at the start (``organoid`` warns where it does not), else None."""
    d = built.scenario.data
    geo = d["geometry"]
    if geo["kind"] != "organoid":
        return None
    layer = float(built.setup.values["params"]["medium_unstirred_layer"])
    fits = medium_faces(d["grid"]["n"], d["grid"]["spacing_um"], geo["octant"])
    return None if geo["radius_um"] + layer > fits else (layer, fits)


def _warn_if_grown_past(reach, radius: float, day: float, source: str):
    """Warn once when an organoid has grown so far that its layer reaches past the box
    (``MediumLayerWarning``); returns what to check at the next snapshot."""
    if reach is None or radius + reach[0] <= reach[1]:
        return reach
    warnings.warn(f"{source}: by day {day:g} the organoid has grown "
                  + layer_cut(round(radius, 1), *reach), MediumLayerWarning, stacklevel=3)
    return None


def _loop(out: Output, built: Built, step: int, fields, progress) -> str:
    sc = built.scenario
    problem, values = built.setup.problem, built.setup.values
    total, every, ckpt = sc.total_steps, sc.output_steps, sc.checkpoint_steps
    show = Progress(total, step, progress)
    reach = _layer_reach(built)
    if step < total:
        show.note("compiling the step, then running (the ETA leaves the compile out)")
    try:
        fields = problem.stepper.place(fields)  # one layout from the first chunk: one compile
        while step < total:
            sol, obs, host = _compute(_chunk, problem, values, fields, every, step, built)
            if obs is None:
                raise RunError(failure_message(sol, problem))
            fields, step = sol.fields, step + every
            reach = _warn_if_grown_past(reach, obs["tumor_radius"], step * sc.dt / MIN_PER_DAY,
                                        sc.source)
            try:
                _write(out, built, step, host, obs, checkpoint=step % ckpt == 0 or step == total)
                show(step, sc.dt, final=step == total)
                error = None
            except Exception as err:  # noqa: BLE001 -- raised again by _together
                error = err
            _together(error, signals=step < total)  # a signal after the last step: complete
    except RunError as err:
        _close(out, "failed", str(err))
        raise RunError(f"{err}; the file keeps every snapshot before it and the last good "
                       f"checkpoint") from None
    except Interrupted as err:
        day = step * sc.dt / MIN_PER_DAY
        _close(out, "interrupted", f"{err} at day {day:g}")
        raise Interrupted(err.signum, f"{out.path}: {err} at day {day:g}; the file keeps "
                          f"every snapshot so far (continue with tmesim resume {out.path})"
                          ) from None
    except KeyboardInterrupt:
        _close(out, "interrupted", f"at day {step * sc.dt / MIN_PER_DAY:g}")
        raise
    except OSError as err:
        _close(out, "failed", str(err))
        raise OutputError(f"{out.path}: cannot write the run file ({err}); it keeps every "
                          "snapshot and checkpoint completed before") from None
    except BaseException as err:  # a bug: say so in the file, keep the traceback
        _close(out, "failed", f"internal error: {type(err).__name__}: {err}")
        raise
    out.set_status("complete")
    out.close()
    return out.path


def _close(out: Output, status: str, message: str) -> None:
    """Record how the run ended and close the file, whatever state the disk is in."""
    try:
        out.set_status(status, message)
    except (OSError, RuntimeError):
        pass  # the status is advisory; every completed snapshot and checkpoint is in place
    try:
        out.close()
    except (OSError, RuntimeError):
        pass


_CAUSES = {
    Status.NONFINITE: "likely cause: a rate, diffusion coefficient or dose too large for the "
                      "time step (try a smaller run.dt_min) or a parameter outside its "
                      "physical range",
    Status.NEGATIVE: "likely cause: cells moved or were consumed faster than the step allows "
                     "(try a smaller run.dt_min, or lower motility and death rates)",
}


def failure_message(sol, problem) -> str:
    """The solve's failure in words, with the likely cause."""
    cause = _CAUSES.get(int(sol.status.code))
    return sol.message(problem) + (f" ({cause})" if cause else "")
