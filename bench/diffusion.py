"""Diffusion-decay throughput of tmesim's transport methods, with references.

Times one oxygen-like field (D = 1e5 um^2/min) plus cytokine-like fields
(D = 1e3), decay 0.1/min, on N^3 grids of 20 um voxels with no-flux faces and
dt = 0.01 min, for the explicit (RKL2 or RKL1 + forward Euler), implicit
(backward Euler by multigrid-preconditioned CG) and LOD plans; one batched tridiagonal sweep (our Thomas scan against
``jax.lax.linalg.tridiagonal_solve``); a plain NumPy forward-Euler step; and
the copy bandwidth of this machine, all in one run. The cosine-eigenmode error
of each method is reported beside its speed. See bench/README.md.

    python bench/diffusion.py                      # full run (minutes)
    python bench/diffusion.py --sizes 32 --fields 1 4 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tmesim
from tmesim import kernels as K

REPO = Path(__file__).resolve().parent.parent
VOXEL_UM = 20.0
DT_MIN = 0.01
DECAY_PER_MIN = 0.1
D_OXYGEN = 1e5  # um^2/min
D_CYTOKINE = 1e3  # um^2/min
COSINE_N = 64
COSINE_STEPS = 100  # to t = 1 min
TRIDIAG_AGREEMENT = 1e-5

# Benchmark method -> (oxygen method, cytokine method) of tmesim.Species.
STEPPER_METHODS = {
    "explicit": ("auto", "auto"),  # oxygen: RKL2 (auto plan); cytokines: forward Euler
    "explicit-rkl1": ("rkl1", "auto"),
    "implicit": ("implicit", "implicit"),  # backward Euler, multigrid-preconditioned CG
    "lod": ("lod", "lod"),  # BioFVM's scheme: LOD sweeps (constant coefficients: SPIKE blocks)
}
ALL_METHODS = (*STEPPER_METHODS, "tridiag-thomas", "tridiag-lax", "numpy-euler", "biofvm-lod")
# Arrays read + written per field: per Euler pass, per RKL2 or RKL1 stage (see README).
ARRAYS_PER_STAGE = {"euler": 2, "rkl2": 5, "rkl1": 3}


# -- set-up -------------------------------------------------------------------
def diffusivities(n_fields: int) -> np.ndarray:
    """Field 0 oxygen-like, the rest cytokine-like (um^2/min)."""
    return np.array([D_OXYGEN] + [D_CYTOKINE] * (n_fields - 1))


def field_names(n_fields: int) -> list[str]:
    return ["oxygen"] + [f"cytokine{i}" for i in range(1, n_fields)]


def no_flux_grid(n: int) -> tmesim.Grid:
    return tmesim.Grid((n, n, n), VOXEL_UM, tmesim.Neumann())


def build_stepper(n: int, n_fields: int, method: str) -> tmesim.Stepper:
    oxygen_method, cytokine_method = STEPPER_METHODS[method]
    species = [
        tmesim.Species(
            name,
            diffusion=float(D),
            decay=DECAY_PER_MIN,
            method=oxygen_method if i == 0 else cytokine_method,
        )
        for i, (name, D) in enumerate(
            zip(field_names(n_fields), diffusivities(n_fields), strict=True)
        )
    ]
    return tmesim.Stepper(no_flux_grid(n), tmesim.SpeciesTable(tuple(species)), DT_MIN)


def random_fields(n: int, n_fields: int, dtype, seed: int = 0) -> np.ndarray:
    """Positive O(1) concentrations (no denormals during a few steps)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, size=(n_fields, n, n, n)).astype(dtype)


def euler_substeps(D: float) -> int:
    """Forward-Euler substeps per dt for the 3D 7-point stencil: ceil(dt / (h^2 / 6D))."""
    return math.ceil(DT_MIN / (VOXEL_UM**2 / (6.0 * D)))


def bytes_per_explicit_step(stepper: tmesim.Stepper, n: int, itemsize: int) -> int | None:
    """Bytes one step must move: Euler 2 arrays per field, each RKL2 stage 5, RKL1 3."""
    total = 0
    for group in stepper.groups:
        if group.method not in ARRAYS_PER_STAGE:
            return None
        stages = 1 if group.method == "euler" else group.stages
        arrays = ARRAYS_PER_STAGE[group.method] * stages * len(group.channels)
        total += arrays * n**3 * itemsize
    return total


# -- timing -------------------------------------------------------------------
def time_calls(call, repeats: int, sync=jax.block_until_ready) -> tuple[float, list[float]]:
    """(first-call seconds, [seconds of each of ``repeats`` later calls])."""
    start = time.perf_counter()
    sync(call())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return first, times


def timing_fields(first: float | None, times: list[float], per_call: int) -> dict:
    return {
        "compile_s": first,
        "step_s": statistics.median(times) / per_call,
        "step_s_min": min(times) / per_call,
        "step_s_max": max(times) / per_call,
        "repeats": len(times),
        "steps_per_call": per_call,
    }


# -- NumPy baseline -------------------------------------------------------------
def numpy_laplacian_no_flux(c: np.ndarray) -> np.ndarray:
    """7-point Laplacian of c (F, X, Y, Z) with no-flux faces (edge ghost cells), 1/um^2."""
    p = np.pad(c, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
    centre = p[:, 1:-1, 1:-1, 1:-1]
    neighbours = (
        p[:, 2:, 1:-1, 1:-1]
        + p[:, :-2, 1:-1, 1:-1]
        + p[:, 1:-1, 2:, 1:-1]
        + p[:, 1:-1, :-2, 1:-1]
        + p[:, 1:-1, 1:-1, 2:]
        + p[:, 1:-1, 1:-1, :-2]
    )
    return (neighbours - 6.0 * centre) * (1.0 / VOXEL_UM**2)


def numpy_euler_step(c: np.ndarray, diffusion: np.ndarray) -> np.ndarray:
    """One dt of forward Euler for every field; fields with equal substep counts go together."""
    out = np.empty_like(c)
    substeps = np.array([euler_substeps(D) for D in diffusion])
    for count in np.unique(substeps):
        channels = np.flatnonzero(substeps == count)
        D = diffusion[channels].astype(c.dtype).reshape(-1, 1, 1, 1)
        h = DT_MIN / int(count)
        block = c[channels]
        for _ in range(int(count)):
            block = block + h * (D * numpy_laplacian_no_flux(block) - DECAY_PER_MIN * block)
        out[channels] = block
    return out


def numpy_plan(n_fields: int) -> list[str]:
    names = field_names(n_fields)
    D = diffusivities(n_fields)
    groups: dict[int, list[str]] = {}
    for name, d in zip(names, D, strict=True):
        groups.setdefault(euler_substeps(d), []).append(name)
    return [f"numpy euler x{k}: " + ", ".join(v) for k, v in groups.items()]


# -- batched tridiagonal sweep --------------------------------------------------
def backward_euler_diagonals(n: int, diffusion: np.ndarray, dtype) -> tuple[np.ndarray, ...]:
    """(lower, diag, upper), each (F, n): one LOD x-sweep with no-flux ends, r = dt D / h^2.

    diag = 1 + r (number of neighbours) + dt λ / 3, as in tmesim's LOD sweep.
    """
    r = (DT_MIN * diffusion / VOXEL_UM**2)[:, None] * np.ones((1, n))
    lower = -r.copy()
    upper = -r.copy()
    lower[:, 0] = 0.0
    upper[:, -1] = 0.0
    diag = 1.0 - lower - upper + DT_MIN * DECAY_PER_MIN / 3.0
    return tuple(a.astype(dtype) for a in (lower, diag, upper))


@jax.jit
def sweep_thomas(lower, diag, upper, c):
    """x-sweep with tmesim.kernels.thomas: c (F, X, Y, Z), coefficients (F, X)."""
    coef = [jnp.moveaxis(a, 1, 0)[:, :, None, None] for a in (lower, diag, upper)]
    solution = K.thomas(*coef, jnp.moveaxis(c, 1, 0))
    return jnp.moveaxis(solution, 0, 1)


@jax.jit
def sweep_lax(lower, diag, upper, c):
    """The same x-sweep with jax.lax.linalg.tridiagonal_solve (Y*Z right-hand sides)."""
    f, x, y, z = c.shape
    solution = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, c.reshape(f, x, y * z))
    return solution.reshape(c.shape)


TRIDIAG_SOLVERS = {
    "tridiag-thomas": (sweep_thomas, "tmesim.kernels.thomas (lax.scan over x)"),
    "tridiag-lax": (sweep_lax, "jax.lax.linalg.tridiagonal_solve"),
}


# -- bandwidth references ---------------------------------------------------------
def numpy_copy_bandwidth(megabytes: int, repeats: int) -> dict:
    """np.copyto of a float32 array into a preallocated one: (read + write) bytes / s."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.zeros_like(src)
    first, times = time_calls(lambda: np.copyto(dst, src), repeats, sync=lambda x: x)
    moved = 2 * src.nbytes
    return {
        "bench": "bandwidth",
        "method": "numpy-copyto",
        "dtype": "float32",
        "bytes": moved,
        "gbps": moved / statistics.median(times) / 1e9,
        **timing_fields(None, times, 1),
    }


def jax_copy_bandwidth(n: int, n_fields: int, repeats: int, passes: int = 20) -> dict:
    """Jitted fori_loop of x * 1.0001 over an (F, N, N, N) float32 array: 2 arrays per pass."""

    @jax.jit
    def scale_repeatedly(x):
        return jax.lax.fori_loop(0, passes, lambda _, y: y * 1.0001, x)

    x = jax.block_until_ready(jnp.ones((n_fields, n, n, n), jnp.float32))
    first, times = time_calls(lambda: scale_repeatedly(x), repeats)
    moved = 2 * x.nbytes * passes
    return {
        "bench": "bandwidth",
        "method": "jax-scale-loop",
        "N": n,
        "fields": n_fields,
        "dtype": "float32",
        "bytes": moved,
        "gbps": moved / statistics.median(times) / 1e9,
        **timing_fields(first, times, passes),
    }


# -- accuracy: cosine eigenmode ---------------------------------------------------
def cosine_mode(n: int, axes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(initial (1, n, n, n) float64, exact perturbation at t = COSINE_STEPS dt): the mode
    1 + ½cos(kx) (``axes`` = 1), or BioFVM's 1 + ½cos(kx)cos(ky)cos(kz) (3)."""
    x = no_flux_grid(n).centers(0)
    k = math.pi / (n * VOXEL_UM)
    one = np.cos(k * x)
    perturbation = 0.5 * (one[:, None, None] * (one[None, :, None] * one[None, None, :]
                                                if axes == 3 else 1.0))
    perturbation = np.broadcast_to(perturbation, (n, n, n))[None]
    t = COSINE_STEPS * DT_MIN
    initial = 1.0 + perturbation
    exact_perturbation = math.exp(-(axes * D_OXYGEN * k**2 + DECAY_PER_MIN) * t) * perturbation
    return np.ascontiguousarray(initial), exact_perturbation


COSINE_KEYS = {1: "cosine_rel_error", 3: "cosine3d_rel_error"}


def cosine_error(method: str, axes: int = 1) -> dict:
    """Relative L2 error of the perturbation at t = 1 min, N = 64, float64, oxygen only,
    from the mode along x (``axes`` = 1) or along all three axes (3, BioFVM's)."""
    n = COSINE_N
    initial, exact_perturbation = cosine_mode(n, axes)
    exact_mean = math.exp(-DECAY_PER_MIN * COSINE_STEPS * DT_MIN)
    start = time.perf_counter()
    if method == "numpy-euler":
        c = initial
        for _ in range(COSINE_STEPS):
            c = numpy_euler_step(c, diffusivities(1))
        final, plan = c, numpy_plan(1)
    else:
        stepper = build_stepper(n, 1, method)
        params = stepper.table.default_params(stepper.grid, jnp.float64)
        final, _ = tmesim.simulate(stepper, jnp.asarray(initial), params, n_steps=COSINE_STEPS)
        final, plan = np.asarray(final), stepper.describe()
    seconds = time.perf_counter() - start
    error = (final - exact_mean) - exact_perturbation
    return {
        "bench": "cosine-accuracy",
        "method": method,
        "N": n,
        "fields": 1,
        "dtype": "float64",
        "mode_axes": axes,
        COSINE_KEYS[axes]: float(np.linalg.norm(error) / np.linalg.norm(exact_perturbation)),
        "run_s": seconds,
        "plan": plan,
    }


# -- one timed case -----------------------------------------------------------------
def time_stepper_method(method, n, n_fields, dtype, fields, steps, repeats):
    stepper = build_stepper(n, n_fields, method)
    params = stepper.table.default_params(stepper.grid, dtype)
    first, times = time_calls(
        lambda: tmesim.simulate(stepper, fields, params, n_steps=steps), repeats
    )
    result = {"bench": "diffusion-step", **timing_fields(first, times, steps)}
    moved = bytes_per_explicit_step(stepper, n, np.dtype(dtype).itemsize)
    if moved is not None:
        result["bytes_per_step"] = moved
        result["gbps"] = moved / result["step_s"] / 1e9
    result["plan"] = stepper.describe()
    return result


def time_tridiag_methods(methods, n, n_fields, dtype, fields, repeats) -> dict[str, dict]:
    """One x sweep by both solvers: first calls timed apart, answers compared, then timed."""
    diagonals = [
        jnp.asarray(a) for a in backward_euler_diagonals(n, diffusivities(n_fields), dtype)
    ]
    first_call, answers = {}, {}
    for method, (sweep, _) in TRIDIAG_SOLVERS.items():
        start = time.perf_counter()
        answers[method] = np.asarray(jax.block_until_ready(sweep(*diagonals, fields)))
        first_call[method] = time.perf_counter() - start
    thomas_answer, lax_answer = answers["tridiag-thomas"], answers["tridiag-lax"]
    disagreement = float(np.max(np.abs(lax_answer - thomas_answer)) / np.max(np.abs(thomas_answer)))
    if not disagreement <= TRIDIAG_AGREEMENT:
        raise SystemExit(
            f"tridiagonal_solve and thomas disagree by {disagreement:.2e} (relative) at "
            f"N={n}, fields={n_fields}, {np.dtype(dtype).name}"
        )
    results = {}
    for method in methods:
        sweep, solver = TRIDIAG_SOLVERS[method]
        _, times = time_calls(lambda sweep=sweep: sweep(*diagonals, fields), repeats)
        results[method] = {
            "bench": "tridiag-sweep",
            **timing_fields(first_call[method], times, 1),
            "max_rel_diff_lax_vs_thomas": disagreement,
            "plan": [f"one backward-Euler x sweep of every field, {solver}"],
        }
    return results


def time_numpy_method(n, n_fields, fields, repeats):
    c = np.asarray(fields)
    D = diffusivities(n_fields)
    first, times = time_calls(lambda: numpy_euler_step(c, D), repeats, sync=lambda x: x)
    return {
        "bench": "diffusion-step",
        **timing_fields(None, times, 1),
        "warmup_s": first,
        "plan": numpy_plan(n_fields),
    }


def biofvm_cosine_errors(binary: Path) -> dict:
    """BioFVM's own LOD solver on both cosine modes of ``cosine_error`` (its binary's
    ``accuracy`` mode, bench/biofvm_lod.cpp): {key: error}."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = subprocess.run([str(binary), str(COSINE_N), "accuracy"], capture_output=True,
                         text=True, env=env, check=True)
    peer = json.loads(run.stdout.strip().splitlines()[-1])
    return {key: peer[key] for key in COSINE_KEYS.values()}


def time_biofvm(binary: Path, n: int, n_fields: int, repeats: int, steps: int) -> dict:
    """BioFVM's own LOD solver on the same problem (bench/biofvm_lod.cpp), 2 OpenMP threads
    unless OMP_NUM_THREADS says otherwise; float64, as BioFVM stores its fields."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = subprocess.run([str(binary), str(n), str(n_fields), str(repeats), str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    peer = json.loads(run.stdout.strip().splitlines()[-1])
    times = [t / 1e3 for t in peer["ms_per_step_all"]]
    return {
        "bench": "diffusion-step",
        **timing_fields(None, [t * steps for t in times], steps),
        "threads": peer["threads"],
        "plan": [f"BioFVM {peer['version']} diffusion_decay_solver__constant_coefficients_LOD_3D, "
                 f"float64 (its only precision), {peer['threads']} OpenMP threads"],
    }


# -- provenance and output --------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description() -> str:
    device = jax.devices()[0]
    text = str(device)
    if device.platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        text += f" ({cpu_model()}, {platform.processor() or platform.machine()}, {cores} cores)"
    else:
        text += f" ({device.device_kind})"
    return text


def git_commit(out_path: Path) -> str:
    """Short HEAD hash, plus "-dirty" if the work tree (less the results file) has changes;
    the environment's TMESIM_COMMIT where set (a copy of the tree without .git)."""
    if os.environ.get("TMESIM_COMMIT"):
        return os.environ["TMESIM_COMMIT"]

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        pathspec = ["--", "."]
        if out_path.resolve().is_relative_to(REPO):
            pathspec.append(f":(exclude){out_path.resolve().relative_to(REPO)}")
        dirty = git("status", "--porcelain", *pathspec)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def emit(result: dict, provenance: dict, out_file) -> dict:
    """Write ``result`` with ``provenance`` as one JSON line (and print it), adding the
    versions of jaxlib and of the device's XLA platform (``platform_version``: the CUDA
    version on a GPU) and the time."""
    import jaxlib

    line = {**result, **provenance, "jaxlib": jaxlib.__version__,
            "xla_platform": jax.devices()[0].client.platform_version}
    line["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    text = json.dumps(line)
    print(text, flush=True)
    out_file.write(text + "\n")
    out_file.flush()
    return line


def fmt(value, spec: str) -> str:
    """format(value, spec), or a right-aligned "-" of the same width for None."""
    return format("-", ">" + spec.split(".")[0]) if value is None else format(value, spec)


def print_table(lines: list[dict]) -> None:
    header = (
        f"{'method':<15}{'N':>5}{'F':>3} {'dtype':<8}{'compile s':>10}{'ms/step':>10}"
        f"{'Mvox-upd/s':>12}{'GB/s':>8}{'/copy':>7}{'cos err':>10}{'3D err':>10}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in lines:
        if r["bench"] in ("diffusion-step", "tridiag-sweep"):
            print(
                f"{r['method']:<15}{r['N']:>5}{r['fields']:>3} {r['dtype']:<8}"
                f"{fmt(r.get('compile_s'), '10.2f')}{1e3 * r['step_s']:>10.2f}"
                f"{r['voxel_updates_per_s'] / 1e6:>12.1f}{fmt(r.get('gbps'), '8.1f')}"
                f"{fmt(r.get('gbps_fraction_of_jax_copy'), '7.2f')}"
                f"{fmt(r.get('cosine_rel_error'), '10.2e')}"
                f"{fmt(r.get('cosine3d_rel_error'), '10.2e')}"
            )
    for r in lines:
        if r["bench"] == "bandwidth":
            print(f"bandwidth reference {r['method']}: {r['gbps']:.1f} GB/s (read + write)")
    print("tridiag-* rows: ms per single x sweep of every field, not per step.")
    print("cos err, 3D err: relative L2 error of the cosine mode along x, and of BioFVM's "
          "mode along x, y and z, N=64, float64, t=1 min.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="grid edges N")
    p.add_argument("--fields", type=int, nargs="+", default=[1, 4, 8], help="numbers of fields")
    p.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median)")
    p.add_argument("--steps", type=int, default=10, help="steps per call, explicit methods")
    p.add_argument("--implicit-steps", type=int, default=4, help="steps per call, implicit")
    p.add_argument("--copy-mb", type=int, default=512, help="size of the NumPy copy array")
    p.add_argument("--skip-accuracy", action="store_true", help="no cosine-eigenmode test")
    p.add_argument("--biofvm", type=Path, default=None,
                   help="bench/biofvm.sh's binary: time BioFVM's LOD solver in the same run")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results.jsonl",
        help="JSON lines are appended here",
    )
    args = p.parse_args(argv)
    if args.biofvm is not None and not os.access(args.biofvm, os.X_OK):
        p.error(f"--biofvm {args.biofvm}: not an executable file (build it with "
                "bench/biofvm.sh)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    x64 = "float64" in args.dtypes or not args.skip_accuracy
    jax.config.update("jax_enable_x64", x64)

    provenance = {
        "device": device_description(),
        "jax": jax.__version__,
        "numpy_version": np.__version__,
        "commit": git_commit(args.out),
        "x64_enabled": x64,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with args.out.open("a") as out_file:
        lines.append(emit(numpy_copy_bandwidth(args.copy_mb, args.repeats), provenance, out_file))
        jax_copy = jax_copy_bandwidth(max(args.sizes), max(args.fields), args.repeats)
        lines.append(emit(jax_copy, provenance, out_file))

        accuracy = {}  # method: {key: error} on both cosine modes
        if not args.skip_accuracy:
            for method in args.methods:
                if method in STEPPER_METHODS or method == "numpy-euler":
                    for axes, key in COSINE_KEYS.items():
                        line = emit(cosine_error(method, axes), provenance, out_file)
                        accuracy.setdefault(method, {})[key] = line[key]
                        lines.append(line)
                elif method == "biofvm-lod" and args.biofvm is not None:
                    accuracy[method] = biofvm_cosine_errors(args.biofvm)
                    lines.append(emit({"bench": "cosine-accuracy", "method": method,
                                       "N": COSINE_N, "fields": 1, "dtype": "float64",
                                       **accuracy[method]}, provenance, out_file))

        for dtype_name in args.dtypes:
            dtype = np.dtype(dtype_name)
            for n in args.sizes:
                for n_fields in args.fields:
                    fields_host = random_fields(n, n_fields, dtype)
                    fields = jax.block_until_ready(jnp.asarray(fields_host))
                    sweeps = None
                    for method in args.methods:
                        if method in STEPPER_METHODS:
                            steps = args.implicit_steps if method == "implicit" else args.steps
                            result = time_stepper_method(
                                method, n, n_fields, dtype, fields, steps, args.repeats
                            )
                        elif method in TRIDIAG_SOLVERS:
                            if sweeps is None:
                                wanted = [m for m in args.methods if m in TRIDIAG_SOLVERS]
                                sweeps = time_tridiag_methods(
                                    wanted, n, n_fields, dtype, fields, args.repeats
                                )
                            result = sweeps[method]
                        elif method == "biofvm-lod":
                            if args.biofvm is None or dtype_name != args.dtypes[0]:
                                continue  # BioFVM has one precision: timed once per grid
                            result = time_biofvm(args.biofvm, n, n_fields, args.repeats, args.steps)
                        else:
                            result = time_numpy_method(n, n_fields, fields_host, args.repeats)
                        line = {
                            "bench": result.pop("bench"),
                            "method": method,
                            "N": n,
                            "fields": n_fields,
                            "dtype": "float64" if method == "biofvm-lod" else dtype_name,
                            **result,
                        }
                        line["voxel_updates_per_s"] = n**3 * n_fields / line["step_s"]
                        if "gbps" in line:
                            line["gbps_fraction_of_jax_copy"] = line["gbps"] / jax_copy["gbps"]
                        line.update(accuracy.get(method, {}))
                        lines.append(emit(line, provenance, out_file))
                    del fields, fields_host
    print_table(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
