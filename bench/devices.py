"""Ensembles split over devices (``tmesim.over_devices``) against the same batch on one;
with ``--slabs``, one grid split into slabs (``tmesim.split_grid``) against one device.

Usage: python bench/devices.py [--n 16] [--devices 1 2 4] [--per-device 1] [--batch 4]
                               [--steps 5] [--repeats 3] [--slabs [--weak] [--implicit]
                               [--processes P ...] [--exchange K ...]]
                               [--out bench/results.jsonl]

Without a GPU, run it on forced CPU host devices, which share the machine's
cores: what it measures there is the cost of splitting, not a speed-up:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python bench/devices.py

(the script sets that flag itself for the largest ``--devices`` when JAX has not
started with one). Problem: the organoid of ``bench/ensemble.py`` (octant of N³
voxels, every process, float32, dt = 2 min), members differing in their initial
radius.

  one device   ``jax.jit(jax.vmap(simulate))`` on the whole batch, the baseline;
  weak         ``over_devices`` with ``per-device`` members on each of D devices
               (batch D·per-device), against the same batch on one device;
  strong       a batch of ``--batch`` members over D devices, against one device;
  slabs        (``--slabs``) one organoid of N³ voxels, its grid split along x
               into D slabs, one per device (D = 1: the split code's overhead),
               against the plain stepper on one device (strong scaling);
  weak slabs   (``--slabs --weak``) the organoid grown with the device count, about
               N³ voxels a device (a side of the multiple of D nearest N·D^(1/3)),
               in D slabs, against the plain stepper on one device at the same
               size, and its time per device-voxel against the fewest devices'
               (1 on hardware that scales perfectly; D or more on host devices,
               which share the cores);
  implicit     (``--slabs --implicit``) the implicit solve alone: oxygen and lactate
               (D = 1e5 um²/min, decay 0.1 and 0.05/min; a per-voxel uptake in a ball
               of half the box, lactate made from it), backward Euler by multigrid-
               preconditioned CG on N³ (medium faces x+, y+, z+ at 160 and 0), dt = 2
               min, in D slabs (its sums are all-reduces, its coarse level gathered)
               against one device;
  processes    (``--slabs --processes P``) the same grid in P slabs, one per
               process of one device, the P processes started here and joined
               by ``jax.distributed`` (Gloo collectives on a CPU, over local
               TCP): each process has the cores to itself.
  exchange     (``--slabs --processes P --exchange K ...``) what the RKL stages'
               exchanges cost, and whether exchanging K planes every K stages
               pays: 48 passes of the 7-point stencil over 7 fields of a slab
               (its width as the organoid's at N and P), carrying two states
               as an RKL stage does. K = 1 is what ``kernels.Halo`` does (one
               plane of the last state each way per pass); K > 1 grows both
               states by K planes once every K passes and computes those passes
               on the grown slab (2K planes more); K = 0 exchanges nothing (the
               compute alone). Timed in the same job.

Median of ``repeats`` calls after a first call (``compile_s``); one JSON line
per case to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _wanted_devices(argv) -> int:
    """The largest --devices value on the command line (4 if none)."""
    if "--devices" not in argv:
        return 4
    values = []
    for a in argv[argv.index("--devices") + 1:]:
        if a.startswith("--"):
            break
        values.append(int(a))
    return max(values)


if __name__ == "__main__" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={_wanted_devices(sys.argv)}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from diffusion import device_description, emit, git_commit, time_calls, timing_fields  # noqa: E402
from ensemble import DT, members, setup  # noqa: E402

import tmesim  # noqa: E402


def timed(call, repeats, steps):
    first, ts = time_calls(call, repeats)
    return timing_fields(first, ts, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--per-device", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slabs", action="store_true",
                    help="one grid of N³ split into slabs instead of an ensemble")
    ap.add_argument("--weak", action="store_true",
                    help="with --slabs: also the grid grown with the device count")
    ap.add_argument("--implicit", action="store_true",
                    help="with --slabs: also the implicit solve of two solutes alone")
    ap.add_argument("--processes", type=int, nargs="*", default=[],
                    help="with --slabs: also the grid over P processes of one device each")
    ap.add_argument("--exchange", type=int, nargs="*", default=[],
                    help="with --processes: the stage exchanges' cost, K planes every K "
                    "passes (0: none)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results.jsonl")
    args = ap.parse_args()
    if "BENCH_JOB_MEMBER" in os.environ:
        return job_member(args)
    available = jax.devices()
    if max(args.devices) > len(available):
        sys.exit(f"--devices {max(args.devices)}: this process sees {len(available)} devices")
    provenance = {"device": device_description(), "devices_seen": len(available),
                  "jax": jax.__version__, "commit": git_commit(args.out), "bench": "devices"}
    cases = [("weak", d, d * args.per_device) for d in args.devices]
    cases += [("strong", d, args.batch) for d in args.devices]
    rows = []
    with open(args.out, "a") as out:
        if args.slabs:
            rows = slab_cases(args, available, provenance, out)
            cases = []
        baseline = {}
        for kind, d, b in cases:
            st, params, fields = members(args.n, b)

            def one(f, st=st, params=params):
                return jax.vmap(lambda x: tmesim.simulate(st, x, params, args.steps)[0])(f)

            if b not in baseline:
                single = jax.jit(one)
                baseline[b] = timed(lambda: single(fields), args.repeats, args.steps)
                rows.append(emit({"method": "one device", "N": args.n, "batch": b,
                                  "devices": 1, **baseline[b]}, provenance, out))
            split = tmesim.over_devices(one, available[:d])
            t = timed(lambda: split(fields), args.repeats, args.steps)
            rows.append(emit({"method": kind, "N": args.n, "batch": b, "devices": d, **t,
                              "time_over_one_device": t["step_s"] / baseline[b]["step_s"]},
                             provenance, out))
    print()
    for r in rows:
        extra = (f"  {r['time_over_one_device']:.2f} x one device"
                 if "time_over_one_device" in r else "")
        if "voxels_per_device" in r:
            extra += (f"; {r['voxels_per_device']} voxels a device, "
                      f"{r['time_per_device_voxel_over_first']:.2f} x the fewest devices' "
                      "time per device-voxel")
        print(f"{r['method']:<19} N={r['N']:<3} B={r.get('batch', 1):<3} D={r['devices']:<2} "
              f"{1e3 * r['step_s']:9.2f} ms/step (compile {r['compile_s']:.1f} s){extra}")


def organoid(n: int):
    """(stepper, params, fields) of the organoid of N³ voxels."""
    s = setup(n)
    return s.stepper, s.problem.inputs(s.values, 0), np.asarray(s.fields)


def implicit(n: int):
    """(stepper, params, fields) of the implicit solve alone (module docstring)."""
    import jax.numpy as jnp

    def faces(level):  # the octant's mirror planes, and the medium beyond the + faces
        return {f"{a}{side}": tmesim.Neumann() if side == "-" else tmesim.Dirichlet(level)
                for a in "xyz" for side in "-+"}

    grid = tmesim.Grid((n, n, n), 20.0, faces(160.0))
    table = tmesim.SpeciesTable((
        tmesim.Species("oxygen", diffusion=1e5, decay=0.1, units="mmHg", initial=160.0,
                       uptake=20.0, method="implicit"),
        tmesim.Species("lactate", diffusion=1e5, decay=0.05, units="mM", method="implicit",
                       boundary=faces(0.0))))

    def react(f, p, t):
        return (tmesim.Rates().lose("oxygen", p["uptake"])
                .produce("lactate", 0.01 * p["uptake"] * f["oxygen"]))

    x = np.arange(n) + 0.5
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    uptake = jnp.asarray(np.where(r < n / 2, 10.0, 0.0), jnp.float32)  # 1/min in the ball
    stepper = tmesim.Stepper(grid, table, DT, react)
    params = table.default_params(grid, jnp.float32) | {"uptake": uptake}
    fields = np.stack([np.full((n,) * 3, 160.0), np.zeros((n,) * 3)]).astype(np.float32)
    return stepper, params, fields


def timed_slabs(args, devices=None, problem=organoid, n=None) -> dict:
    """Step time of ``problem`` (the organoid, or ``implicit``) on N³ voxels (or n³), its
    grid in slabs over ``devices`` (None: the plain stepper)."""
    stepper, params, fields = problem(n or args.n)  # host fields: a job's processes pass
    if devices is not None:  # them whole
        stepper = tmesim.split_grid(stepper, devices)
    run = jax.jit(lambda f: tmesim.simulate(stepper, f, params, args.steps)[0])
    return timed(lambda: run(fields), args.repeats, args.steps)


def weak_side(n: int, d: int) -> int:
    """The side of a grid of about d·n³ voxels that splits into d slabs of 3 planes or
    more: the multiple of d nearest n·d^(1/3)."""
    return max(3 * d, d * round(n * d ** (1 / 3) / d))


def slab_cases(args, available, provenance, out) -> list:
    """One organoid's grid in D slabs (one process), and in P slabs over P processes,
    against the plain stepper on one device."""
    base = timed_slabs(args)
    rows = [emit({"method": "one device", "N": args.n, "devices": 1, **base}, provenance, out)]
    for d in args.devices:
        t = timed_slabs(args, available[:d])
        rows.append(emit({"method": "slabs", "N": args.n, "devices": d, **t,
                          "time_over_one_device": t["step_s"] / base["step_s"]},
                         provenance, out))
    if args.implicit:
        alone = timed_slabs(args, problem=implicit)
        rows.append(emit({"method": "implicit one device", "N": args.n, "devices": 1, **alone},
                         provenance, out))
        for d in args.devices:
            t = timed_slabs(args, available[:d], implicit)
            rows.append(emit({"method": "implicit slabs", "N": args.n, "devices": d, **t,
                              "time_over_one_device": t["step_s"] / alone["step_s"]},
                             provenance, out))
    first = None  # the weak case on the fewest devices: weak scaling's reference
    for d in args.devices if args.weak else []:
        n = weak_side(args.n, d)
        alone = base if n == args.n else timed_slabs(args, n=n)
        t = timed_slabs(args, available[:d], n=n)
        per_voxel = t["step_s"] / (n ** 3 // d)  # seconds a step per voxel of a device
        first = first or per_voxel
        rows.append(emit({"method": "weak slabs", "N": n, "devices": d, **t,
                          "voxels_per_device": n ** 3 // d, "one_device_step_s":
                          alone["step_s"], "time_over_one_device":
                          t["step_s"] / alone["step_s"],
                          "time_per_device_voxel_over_first": per_voxel / first},
                         provenance, out))
    for p in args.processes:
        t, exchanges = job(args, p)
        rows.append(emit({"method": "processes", "N": args.n, "devices": p, **t,
                          "time_over_one_device": t["step_s"] / base["step_s"]},
                         provenance, out))
        for k, e in exchanges.items():
            rows.append(emit({"method": f"exchange {k}", "N": args.n, "devices": p, **e,
                              "fields": EXCHANGE_FIELDS, "slab": args.n // p},
                             provenance, out))
    return rows


EXCHANGE_FIELDS, EXCHANGE_PASSES = 7, 48


def timed_exchanges(args, devices) -> dict:
    """ms per pass of ``EXCHANGE_PASSES`` stencil passes over a slab of each device, its
    planes exchanged K at a time (``--exchange``; module docstring), keyed by K."""
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    n, count = args.n, len(devices)
    mesh = Mesh(np.array(devices), ("x",))
    halo = tmesim.kernels.Halo("x", count, (None, None))  # closed true faces

    def grown(x, k):  # the neighbours' k edge planes each side (zeros at the true faces)
        return halo.grown(x, k, 1)

    def stencil(ab, _):  # one RKL-like pass over a whole (grown) slab, closed faces
        a, b = ab
        lap = -6.0 * a
        for ax in (1, 2, 3):
            p = jnp.pad(a, [(0, 0)] * ax + [(1, 1)] + [(0, 0)] * (3 - ax), mode="edge")
            lap = lap + jax.lax.slice_in_dim(p, 2, None, axis=ax) + jax.lax.slice_in_dim(
                p, 0, -2, axis=ax)
        return (0.9 * a + 0.05 * b + 0.01 * lap, a), None

    def chain(a, b, k):
        if k == 0:  # no exchange: the compute alone
            return jax.lax.scan(stencil, (a, b), None, length=EXCHANGE_PASSES)[0][0]

        def block(ab, _):  # grow, k passes over the grown slab, keep the slab
            a, b = ab
            if k == 1:  # the previous state is not read across a face: not exchanged
                b = jnp.pad(b, [(0, 0), (1, 1), (0, 0), (0, 0)], mode="edge")
            else:
                b = grown(b, k)
            a, b = jax.lax.scan(stencil, (grown(a, k), b), None, length=k)[0]
            return tuple(jax.lax.slice_in_dim(x, k, k + n // count, axis=1)
                         for x in (a, b)), None
        return jax.lax.scan(block, (a, b), None, length=EXCHANGE_PASSES // k)[0][0]

    shape = (EXCHANGE_FIELDS, n, n, n)
    spec = NamedSharding(mesh, P(None, "x"))
    start = np.random.default_rng(0).random(shape, np.float32)
    a = jax.make_array_from_callback(shape, spec, lambda idx: start[idx])
    out = {}
    for k in args.exchange:
        if k and (EXCHANGE_PASSES % k or k > n // count):
            sys.exit(f"--exchange {k}: must divide {EXCHANGE_PASSES} and fit a slab of "
                     f"{n // count}")
        run = jax.jit(jax.shard_map(lambda a, b, k=k: chain(a, b, k), mesh=mesh,
                                    in_specs=(P(None, "x"),) * 2, out_specs=P(None, "x")))
        out[k] = timed(lambda: run(a, a), args.repeats, EXCHANGE_PASSES)
    return out


def job(args, processes: int) -> tuple[dict, dict]:
    """``timed_slabs`` and ``timed_exchanges`` in a job of ``processes`` processes of one
    CPU device each, started here; process 0's timings."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, __file__, "--slabs", "--n", str(args.n), "--steps",
            str(args.steps), "--repeats", str(args.repeats), "--exchange",
            *map(str, args.exchange)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=dict(
        os.environ, BENCH_JOB_MEMBER="1", JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(k))) for k in range(processes)]
    try:
        outs = [p.communicate(timeout=3600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    if any(p.returncode for p in procs):
        sys.exit(f"--processes {processes}: the job failed ({[p.returncode for p in procs]})")
    lines = outs[0].strip().splitlines()
    return json.loads(lines[-2]), {int(k): v for k, v in json.loads(lines[-1]).items()}


def job_member(args) -> None:
    """One process of ``job``: the grid over every device of the job."""
    jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    t = timed_slabs(args, jax.devices())
    exchanges = timed_exchanges(args, jax.devices())
    if jax.process_index() == 0:
        print(json.dumps(t))
        print(json.dumps(exchanges))


if __name__ == "__main__":
    main()
