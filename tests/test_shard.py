"""Ensembles over devices (issue 15), on 4 CPU host devices: ``pytest -k shard``.

JAX reads ``--xla_force_host_platform_device_count`` when it starts, so each test runs
its checks in a fresh Python process with ``XLA_FLAGS`` set (the suite's own process
keeps one device). Float32 ensembles must agree with the same batch on one device within
1e-6 of each quantity's largest value (a device's share is compiled for its own batch
size, so round-off differs: 3e-7 in the fields after 24 steps, measured), and the
compiled program must hold no collective: the members of a batch never exchange data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from test_fit import SCENARIO, placeholder_measurements, write_problem

import tmesim
from tmesim._output import read_status, snapshot_count

DEVICES = 4
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


def device_env(devices: int = DEVICES, **extra) -> dict:
    """The environment of a process with 4 (``devices``) CPU host devices, without the
    suite's persistent compilation cache, so that the process compiles what it checks
    (a cached split program aborted, 3 of 3 and 2 of 2, while two groups' loops of
    exchanges could run side by side: docs/devices.md, "The order of the exchanges")."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", **extra)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def run_on_devices(script: str, *args: str, devices: int = DEVICES) -> dict:
    env = device_env(devices)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_as_job(script: str) -> list[str]:
    """``script`` run as the two processes of one ``jax.distributed`` job on this machine
    (its arguments: the rank and the coordinator's port), one CPU device each; both must
    succeed. Their standard outputs."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(rank),
                               str(port)], env=device_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        ended = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:  # one left alone would wait for its partner forever
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], ended[0][1][-3000:] + ended[1][1][-3000:]
    return [out for out, _ in ended]


def free_port() -> int:
    """A TCP port on this machine nobody listens on (for a job's coordinator)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_shard_over_devices_needs_one_batch_axis_on_every_input():
    """Inputs whose leading axes differ, or a scalar among them, are refused with what was
    found (here on the suite's one device: no subprocess needed)."""
    double = tmesim.over_devices(lambda a, b: (a * 2.0, b * 2.0))
    with pytest.raises(ValueError, match=r"same leading \(batch\) axis; got leading sizes "
                                         r"\['3', '4'\]"):
        double(np.ones(3), np.ones((4, 2)))
    with pytest.raises(ValueError, match="same leading"):
        double(np.ones(3), np.float64(1.0))
    a, b = double(np.arange(3.0), np.ones((3, 2)))
    assert np.array_equal(np.asarray(a), [0.0, 2.0, 4.0]) and np.asarray(b).shape == (3, 2)


ENSEMBLE = """
import json
import jax, jax.numpy as jnp, numpy as np
import tmesim as tm

assert len(jax.devices()) == 4, jax.devices()
setup = tm.organoid(n=8, spacing=40.0, radius=150.0, dt=5.0)  # float32
P = setup.problem
sets = [tm.set_values(setup.values, {"tumor_division_rate": r, "medium.oxygen": o})
        for r, o in ((7e-4, 38.0), (1e-3, 60.0), (5e-4, 20.0), (1.2e-3, 100.0))]
batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *sets)

def members(values):
    return jax.vmap(lambda v: tm.solve(P, v, n_steps=24, save=tm.SaveAt(
        jnp.asarray([12, 24]), tm.observables)))(values)

one = jax.jit(members)(batch)             # the whole batch on the default device
ensemble = tm.over_devices(members)
out = ensemble(batch)
text = ensemble.lower(batch).compile().as_text()
err = float(np.max(np.abs(np.asarray(out.fields) - np.asarray(one.fields)))
            / np.max(np.abs(np.asarray(one.fields))))
obs = max(float(np.max(np.abs(np.asarray(out.saved[k]) - np.asarray(one.saved[k])))
                / np.max(np.abs(np.asarray(one.saved[k]))))
          for k in ("tumor_volume", "tumor_radius", "hypoxic_fraction"))
three = ensemble(jax.tree_util.tree_map(lambda x: x[:3], batch))  # padded to 4, cut to 3
uneven = [three.fields.shape[0],
          float(np.max(np.abs(np.asarray(three.fields) - np.asarray(out.fields[:3]))))]
print(json.dumps({"err": err, "obs": obs, "text": text, "uneven": uneven,
                  "devices": sorted(str(d) for d in out.fields.sharding.device_set),
                  "differ": bool(not np.allclose(out.fields[0], out.fields[1]))}))
"""


def test_shard_an_ensemble_of_organoids_over_devices_matches_one_device():
    """Four organoids with different parameters and media, vmapped and split over 4
    devices by ``tmesim.over_devices``: each device runs one member, the result equals
    the same batch on one device, and the program exchanges nothing between devices."""
    r = run_on_devices(ENSEMBLE)
    assert r["devices"] == [f"cpu:{i}" for i in range(DEVICES)], r["devices"]
    assert r["differ"]  # the members are different runs
    assert r["err"] <= 1e-6 and r["obs"] <= 1e-6, (r["err"], r["obs"])
    found = [c for c in COLLECTIVES if c in r["text"]]
    assert not found, f"collectives in the sharded program: {found}"
    assert r["uneven"] == [3, 0.0]  # a batch of 3: padded with a copy, its result dropped


FIT = """
import json, os, sys
import h5py, jax, numpy as np
import tmesim
from tmesim._fit import Objective

assert len(jax.devices()) == 4, jax.devices()
used = set()
evaluate = Objective.value_and_grad_batch

def recorded(self, thetas):
    value, grad = evaluate(self, thetas)
    used.update(str(d) for d in value.devices())
    return value, grad

Objective.value_and_grad_batch = recorded
problem, folder = sys.argv[1], sys.argv[2]
out = f"{folder}/fit_4.h5"
tmesim.fit(problem, out, progress=None, settings={"devices": 4})
four = used.copy()
used.clear()
tmesim.fit(problem, f"{folder}/fit_1.h5", progress=None, settings={"devices": 1})
steps = {}
with h5py.File(out) as h4, h5py.File(f"{folder}/fit_1.h5") as h1:
    for k in ("theta", "value", "grad", "history", "iterations", "evaluations", "done"):
        a, b = (np.asarray(h[f"starts/{k}"][()], float) for h in (h1, h4))
        both = np.isnan(a) & np.isnan(b)  # unused slots: NaN in both; NaN in one: inf
        gap = np.where(both, 0.0, np.nan_to_num(np.abs(a - b), nan=np.inf))
        scale = np.max(np.abs(np.where(both, 0.0, np.nan_to_num(a, nan=0.0))))
        steps[k] = float(np.max(gap) / max(scale, 1e-300))
    steps["best"] = float(np.max(np.abs(h1["best/theta"][()] - h4["best/theta"][()])))
    starts = len(h4["starts/theta"])
try:
    tmesim.fit(problem, f"{folder}/fit_8.h5", progress=None, settings={"devices": 8})
    refused = ""
except tmesim.ProblemError as e:
    refused = str(e)
print(json.dumps({
    "used": sorted(four), "one": sorted(used), "starts": starts, "steps": steps,
    "refused": refused, "written": os.path.exists(f"{folder}/fit_8.h5")}))
"""


def test_shard_a_fit_over_devices_gives_the_result_of_one_device(tmp_path):
    """``[fit] devices = 4``: each compiled call of the starts is split over the four
    devices (a batch of four, one start on each); the NLL and gradient it stored for
    each start, its history and the best point are those of the same fit on one device
    to round-off: the split takes the same steps; more devices than the process has is
    refused, naming the setting, before anything is written."""
    path = write_problem(tmp_path / "p", placeholder_measurements(days=(0.5, 1.0)),
                         scenario=SCENARIO.format(kind="spheroid").replace("days = 2.0",
                                                                           "days = 1.0"),
                         fit_settings="starts = 4\niterations = 2\npolish_iterations = 0\n"
                                      "profiles = []\n")
    r = run_on_devices(FIT, path, str(tmp_path))
    assert r["used"] == [f"cpu:{i}" for i in range(DEVICES)], r["used"]
    assert r["one"] == ["cpu:0"] and r["starts"] == 4
    # the same fit on one device: every iteration's point, NLL and gradient (float64;
    # measured: the points 3e-16, the gradients 2e-13 of their largest)
    assert all(v <= 1e-10 for v in r["steps"].values()), r["steps"]
    assert "[fit] devices: devices = 8, but this process sees 4" in r["refused"]
    assert not r["written"]


TWO_PROCESSES = """
import json, sys
import jax
rank, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=rank)
import jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
import tmesim as tm

setup = tm.spheroid(n=16, spacing=20.0, radius=120.0, dt=5.0)  # float32
P = setup.problem
rates = (5e-4, 7e-4, 9e-4, 1.1e-3)
batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[
    tm.set_values(setup.values, {"tumor_division_rate": r}) for r in rates])

def members(values):
    return jax.vmap(lambda v: tm.solve(P, v, n_steps=48).fields)(values)

out = tm.over_devices(members)(batch)        # jax.devices(): one per process
whole = np.asarray(multihost_utils.process_allgather(out, tiled=True))
mine = [s.index[0] for s in out.addressable_shards]
alone = np.asarray(jax.jit(members)(jax.tree_util.tree_map(lambda x: x[mine[0]], batch)))
print(json.dumps({"rank": rank, "processes": jax.process_count(),
                  "devices": len(jax.devices()), "rows": [mine[0].start, mine[0].stop],
                  "gathered": whole.shape[0],
                  "err": float(np.max(np.abs(whole[mine[0]] - alone)) / np.max(np.abs(alone))),
                  "differ": bool(not np.allclose(whole[0], whole[-1]))}))
"""


def test_shard_two_processes_form_one_job_as_jax_distributed_does():
    """Two local CPU processes joined by ``jax.distributed.initialize`` (the multi-host
    recipe of docs/devices.md): ``over_devices`` over the job's two devices gives each
    process half of four spheroids, and the gathered result equals each half run alone
    in its process on its own device."""
    results = [json.loads(out.strip().splitlines()[-1]) for out in run_as_job(TWO_PROCESSES)]
    assert [r["rows"] for r in results] == [[0, 2], [2, 4]]
    for r in results:
        assert r["processes"] == 2 and r["devices"] == 2 and r["gathered"] == 4
        assert r["differ"]
        assert r["err"] <= 1e-6, r["err"]


TWO_PROCESS_SLABS = """
import json, sys
import jax
rank, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=rank)
import numpy as np
from jax.experimental import multihost_utils
import tmesim as tm

s = tm.organoid(n=64, spacing=30.0, radius=768.0, dt=2.0)  # float32, every process
params, fields = s.problem.inputs(s.values, 0), np.asarray(s.fields)
split = tm.split_grid(s.stepper, jax.devices())  # two slabs of 32, one per process
run = jax.jit(lambda st, f: tm.simulate(st, f, params, 30)[0], static_argnums=0)
whole = np.asarray(multihost_utils.process_allgather(run(split, fields), tiled=True))
if rank == 0:
    one = np.asarray(run(s.stepper, fields))  # this process's own device
    diff, scale = (np.max(np.abs(x), axis=(1, 2, 3)) for x in (whole - one, one))
    err = diff / np.where(scale > 0, scale, 1.0)  # a field that stays 0: its difference
    print(json.dumps({"err": err.tolist(), "names": list(s.stepper.table.names)}))
"""


PROGRAM = """
import re
import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


def collectives(text):
    # [kind, elements of its largest operand or result] of each collective of a program
    ops = []
    for line in text.splitlines():
        m = re.search(r"= (.*?) (all-gather|all-reduce|all-to-all|reduce-scatter|"
                      r"collective-permute)(-start)?\\(", line)
        if m:
            sizes = [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                     for dims in re.findall(r"\\[([0-9,]*)\\]", m.group(1))]
            ops.append([m.group(2), max(sizes)])
    return ops


def unordered(text):
    # (loop, later) pairs of one computation of the compiled program: a loop that
    # exchanges between devices (a while or a conditional holding collectives), and a
    # later collective or such loop that does not depend on its result. XLA's CPU
    # runtime orders collectives only by when they start: such a pair can run side by side
    comps, cur = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\\w.\\-]+) .*\\{$", line)
        if head:
            cur = comps.setdefault(head.group(1), [])
        elif line.startswith("}"):
            cur = None
        elif cur is not None and " = " in line:
            name, rest = line.strip().removeprefix("ROOT ").split(" = ", 1)
            op = re.search(r"\\b([a-z\\-]+)\\(", rest)
            calls = re.findall(r"(?:body|condition|branch_computations|true_computation|"
                               r"false_computation|calls)=\\{?(%[\\w.\\-]+(?:, ?%[\\w.\\-]+)*)",
                               rest)
            cur.append((name.lstrip("%"), op.group(1) if op else "",
                        set(re.findall(r"%([\\w.\\-]+)", rest)),
                        [c.strip().lstrip("%") for cs in calls for c in cs.split(",")
                         if c.strip()]))

    def exchanges(comp, seen=()):
        return any(op.startswith(COLLECTIVES) or any(
            c in comps and c not in seen and exchanges(c, seen + (comp,)) for c in subs)
            for _, op, _, subs in comps.get(comp, []))

    pairs = []
    for comp, insts in comps.items():
        deps, loops = {}, []
        for name, op, args, subs in insts:
            deps[name] = set().union(*([{a} | deps.get(a, set()) for a in args if a in deps]
                                       or [set()]))
            inner = [c for c in subs if c in comps and exchanges(c)]
            if op.startswith(COLLECTIVES) or (inner and op in ("while", "conditional")):
                pairs += [(loop, name) for loop in loops if loop not in deps[name]]
                if inner and op in ("while", "conditional"):
                    loops.append(name)
    return pairs
"""


SLABS = PROGRAM + """
import json, re
import jax, jax.numpy as jnp, numpy as np
import tmesim as tm

N_SLABS = len(jax.devices())  # of 6 planes each


def problem(dtype, periodic):
    x = ({"x-": tm.Periodic(), "x+": tm.Periodic()} if periodic
         else {"x-": tm.Dirichlet(38.0), "x+": tm.Neumann(0.5)})
    grid = tm.Grid((6 * N_SLABS, 12, 10), 20.0, x | {"y-": tm.Dirichlet(20.0)})
    table = tm.SpeciesTable((
        tm.Species("oxygen", diffusion=1e5, decay=0.1, units="mmHg", initial=38.0, uptake=20.0),
        tm.Species("vegf", diffusion=1e3, decay=0.1, units="nM"),
        tm.Species("ecm", kind="matrix", units="volume fraction"),
        tm.Species("drug", diffusion=3e3, decay=0.01, variable_diffusion=True, units="nM"),
        tm.Species("tumor", kind="cell", diffusion=20.0, variable_diffusion=True),
        tm.Species("cd8", kind="cell", diffusion=50.0),
        tm.Species("lactate", diffusion=1e5, decay=0.05, method="implicit", initial=1.0),
    ))

    def react(f, p, t):  # pointwise; p["sink"] is a per-voxel value, split with the fields
        return (tm.Rates().lose("oxygen", p["uptake"] * f["ecm"])
                .produce("vegf", 0.01 * f["ecm"] * f["oxygen"] / (10.0 + f["oxygen"]))
                .lose("vegf", p["sink"])
                .scale_mobility("drug", 1.0 / (1.0 + 3.0 * f["ecm"]))
                .scale_mobility("tumor", 1.0 / (1.0 + f["ecm"]))
                .lose("ecm", 1e-3 * f["vegf"])
                .drift("cd8", -40.0 * f["vegf"])          # chemotaxis up the VEGF gradient
                .carry(200.0 * f["ecm"])                   # a bulk flow of the whole mixture
                .produce("tumor", 0.02 * f["tumor"] * f["oxygen"] / (5.0 + f["oxygen"]))
                .produce("lactate", 5.0 * f["tumor"]))

    def pressure(phi, p):  # the crowding push, re-evaluated at every cell sub-step
        return 100.0 * phi

    rng = np.random.default_rng(3)
    pinned = rng.random(grid.shape) < 0.03
    stepper = tm.Stepper(grid, table, 0.05, react, pinned=pinned, cell_speed=5.0,
                         pressure=pressure, pressure_stiffness=100.0)
    sink = jnp.asarray(0.02 * rng.random(grid.shape), dtype)
    params = table.default_params(grid, dtype) | {"uptake": jnp.asarray(10.0, dtype),
                                                  "sink": sink}
    fields = np.concatenate([np.full((1,) + grid.shape, 38.0),
                             rng.uniform(0, 1, (3,) + grid.shape),
                             rng.uniform(0, 0.45, (2,) + grid.shape),
                             rng.uniform(0, 1, (1,) + grid.shape)])
    return stepper, params, jnp.asarray(fields, dtype)




import sys
out = {}
if sys.argv[1] == "gradient":  # float64: round-off is all there is to see
    jax.config.update("jax_enable_x64", True)
    stepper, params, fields = problem(jnp.float64, False)
    split = tm.split_grid(stepper, jax.devices())
    w = jnp.asarray(np.random.default_rng(5).random(fields.shape))

    def loss(st, p, y0):
        return jnp.sum(w * tm.solve(tm.StepperProblem(st), p, y0, n_steps=20).fields ** 2)

    g1 = jax.grad(loss, argnums=(1, 2))(stepper, params, fields)
    compiled = jax.jit(lambda p, y0: jax.grad(loss, argnums=(1, 2))(split, p, y0)).lower(
        params, fields).compile()
    g4 = compiled(params, fields)
    out["unordered"] = unordered(compiled.as_text())[:5]  # the reverse pass's exchanges
    pairs = [(g1[0][k], g4[0][k]) for k in ("uptake", "sink", "diffusion", "boundary_value")]
    pairs.append((g1[1], g4[1]))
    out["grad"] = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in pairs]
    out["grad_nonzero"] = [float(jnp.max(jnp.abs(a))) for a, _ in pairs]
    print(json.dumps(out))
    sys.exit()

for periodic in (False, True):
    stepper, params, fields = problem(jnp.float32, periodic)
    split = tm.split_grid(stepper, jax.devices())
    one, snaps1 = tm.simulate(stepper, fields, params, 20, save_every=5)
    four, snaps4 = tm.simulate(split, fields, params, 20, save_every=5)
    # the explicit and cell groups against the largest value; the implicit channel (last,
    # lactate) against its own, apart: see check_slabs
    scale = float(jnp.max(jnp.abs(one)))
    out[f"err_{periodic}"] = float(jnp.max(jnp.abs(one - four)[:-1])) / scale
    out[f"snaps_{periodic}"] = float(jnp.max(jnp.abs(snaps1 - snaps4)[:, :-1])) / scale
    out[f"implicit_{periodic}"] = float(jnp.max(jnp.abs(snaps1 - snaps4)[:, -1])
                                        / jnp.max(jnp.abs(snaps1[:, -1])))
    out[f"laid_{periodic}"] = str(four.sharding.spec)
    out[f"plan_{periodic}"] = stepper.describe()
    out[f"x_edge_{periodic}"] = np.asarray(one[0, 0]).tolist()  # oxygen on the x- face

# the compiled time loop: the step's halo exchanges, and number-sized agreements only
stepper, params, fields = problem(jnp.float32, False)
split = tm.split_grid(stepper, jax.devices())
from tmesim._solve import _solve
text = _solve.lower(tm.StepperProblem(split), None, 20, 2, params, fields, 0,
                    jnp.arange(5, 21, 5)).compile().as_text()
out["ops"] = collectives(text)

out["unordered"] = unordered(text)[:5]

# a failure is located on the whole grid: a NaN on the last slab's lower edge, which one
# step spreads to its neighbours, into the slab below (x = 17) too
bad = fields.at[1, 18, 4, 7].set(jnp.nan)
sol1 = tm.solve(tm.StepperProblem(stepper), params, bad, n_steps=3)
sol4 = tm.solve(tm.StepperProblem(split), params, bad, n_steps=3)
out["failure"] = [sol1.message(tm.StepperProblem(stepper)), sol4.message(tm.StepperProblem(split))]

try:
    tm.split_grid(tm.Stepper(stepper.grid, tm.SpeciesTable((tm.Species(
        "oxygen", diffusion=1e5, method="lod"),)), 0.05), jax.devices())
except ValueError as e:
    out["lod"] = str(e)
try:
    tm.split_grid(tm.Stepper(tm.Grid((10, 4, 4), 20.0), stepper.table, 0.05), jax.devices())
except ValueError as e:
    out["uneven"] = str(e)
print(json.dumps(out))
"""


def check_slabs(r: dict, devices: int, tol: float = 1e-6) -> None:
    """The split run against one device's. Float32 round-off differs on a slab (XLA sums in
    another order): the explicit and cell groups agree within ``tol`` of the largest value
    (measured 7e-7 on four slabs). The implicit channel is solved by conjugate gradients
    to a relative residual of 1e-5 (float32), and a slab's dot products round differently, so the
    split solve can stop an iteration before or after one device's: both meet the
    tolerance, and they differ by its order. Within 1e-4 of the channel's largest value
    (measured 7.5e-6 on an Intel Xeon, where the iterations differed; below 1e-6 of the
    grid's largest value on an AMD EPYC, where they did not)."""
    for periodic in (False, True):
        assert r[f"err_{periodic}"] <= tol and r[f"snaps_{periodic}"] <= tol, r
        assert r[f"implicit_{periodic}"] <= 1e-4, r
        assert r[f"laid_{periodic}"] == "P(None, 'x')"
    assert not np.allclose(r["x_edge_False"], r["x_edge_True"])  # the x faces matter
    assert r["plan_False"] == ["rkl2 x18: oxygen", "euler: vegf", "static: ecm",
                               "rkl2 x3: drug", "cell: tumor, cd8", "implicit: lactate"]
    kinds = {k for k, _ in r["ops"]}
    assert "collective-permute" in kinds and kinds <= {"collective-permute", "all-reduce",
                                                       "all-gather"}, kinds
    # the multigrid's gathered level: slabs of 6 pair up once, to 3: 3 x 6 x 5 cells a device
    assert max(n for k, n in r["ops"] if k == "all-gather") <= 3 * devices * 6 * 5, r["ops"]
    # a collective-permute moves one plane (12 x 10 voxels) of at most a group's 2 channels
    assert max(n for k, n in r["ops"] if k == "collective-permute") <= 2 * 12 * 10, r["ops"]
    # an all-reduce agrees on at most one number per field (7)
    assert max(n for k, n in r["ops"] if k == "all-reduce") <= 7, r["ops"]
    # every exchange after a loop of exchanges waits for it (docs/devices.md, "The order
    # of the exchanges"; the groups' loops ran side by side before they were ordered)
    assert r["unordered"] == [], r["unordered"]
    one, split = r["failure"]
    assert one == split and "non-finite value" in one and "voxel (17, 4, 7)" in one, r
    assert "the 'lod' transport of oxygen is not split over devices" in r["lod"]
    assert f"10 voxels along x do not split into {devices} equal slabs" in r["uneven"]


def test_shard_a_grid_split_into_slabs_matches_one_device():
    """``tmesim.split_grid``: a 24 x 12 x 10 grid in four slabs of 6 x 12 x 10, on 4
    devices, with Dirichlet, Neumann and closed faces (and, apart, a periodic x axis),
    a per-voxel mobility, pinned voxels, a per-voxel parameter, RKL2, Euler, implicit
    and static groups, and two cell populations moved by motility, chemotaxis, a
    crowding pressure and a bulk flow. Each step exchanges one edge plane per face and
    stencil pass (``collective-permute``); the implicit solve's sums agree on a number
    per channel (``all-reduce``) and its multigrid gathers one coarse level
    (slabs of 6 cells pair up once, to 3, which do not: 12 x 6 x 5 cells); the rest of
    the loop agrees on numbers (the guard's flags, a failure's location) and never
    gathers a field. The result equals one device's to float32 round-off, and the
    implicit channel to its solve's tolerance (``check_slabs``)."""
    check_slabs(run_on_devices(SLABS, "forward"), DEVICES)


@pytest.mark.slow  # about 2 minutes: 8 host devices share the 2 cores of a CI machine
def test_shard_a_grid_split_into_eight_slabs_matches_one_device():
    """The same checks on 8 host devices: a 48 x 12 x 10 grid in eight slabs of 6, within
    2e-6 of the largest value: oxygen (38 mmHg at most) differed by 1.0e-6 of it, 10
    float32 ulps at 33 mmHg, after 360 RKL stages (20 steps of 18): round-off that walks
    like the square root of the passes (19 ulps) is 2e-6 here."""
    check_slabs(run_on_devices(SLABS, "forward", devices=8), 8, tol=2e-6)


@pytest.mark.slow  # 2 minutes, most of it compiling both reverse passes
def test_shard_a_gradient_through_slabs_matches_one_device():
    """The same problem's gradient (float64, 20 steps; the uptake, a per-voxel value, the
    diffusion coefficients, the faces' values and the initial fields) through the grid
    split in four slabs equals one device's within 1e-10 relative (measured 5e-16): the
    halo exchanges, the RKL and cell-transport reverse rules, the implicit solve's
    transposed solve and the coarse level's gather all transpose exactly; in its compiled
    program every exchange comes after the loops of exchanges before it (``unordered``)."""
    r = run_on_devices(SLABS, "gradient")
    assert max(r["grad"]) <= 1e-10 and min(r["grad_nonzero"]) > 0, r
    assert r["unordered"] == [], r["unordered"]  # the reverse loops wait for each other


NICHE = PROGRAM + """
import json
from dataclasses import replace
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)  # for the gradient; the forward run is float32
import tmesim as tm
from tmesim._solve import _solve


def in_slabs(setup):  # the organoid's grid in four slabs along x, one per device
    return replace(setup.problem, stepper=tm.split_grid(setup.problem.stepper, jax.devices()))


out = {}
s = tm.organoid(n=16, spacing=40.0, radius=120.0, dt=5.0)  # float32, slabs of 4 x 16 x 16
split = in_slabs(s)
text = _solve.lower(split, None, 24, 2, s.values, s.fields, 0,
                    jnp.arange(6, 25, 6)).compile().as_text()
out["ops"], out["unordered"] = collectives(text), unordered(text)[:5]
one = np.asarray(tm.solve(s.problem, s.values, n_steps=24).fields)
four = np.asarray(tm.solve(split, s.values, n_steps=24).fields)
gap, top = np.max(np.abs(four - one), axis=(1, 2, 3)), np.max(np.abs(one), axis=(1, 2, 3))
out["state"] = float(gap.max() / top.max())
out["fields"] = dict(zip(s.problem.stepper.table.names,
                         (gap / np.where(top > 0, top, 1.0)).tolist()))
out["grew"] = float(np.max(np.abs(one - np.asarray(s.fields))))

g = tm.organoid(n=12, spacing=40.0, radius=120.0, dt=5.0, dtype=jnp.float64)  # slabs of 3
names = ("tumor_division_rate", "o2_uptake", "tissue_mobility")


def volume(problem, x):  # the tumour volume after 12 steps
    v = tm.set_values(g.values, dict(zip(names, x)))
    return tm.solve(problem, v, n_steps=12, save=tm.SaveAt(
        jnp.asarray([12]), tm.observables)).saved["tumor_volume"][-1]


x = jnp.asarray([float(g.values["params"][k]) for k in names])
g1 = np.asarray(jax.grad(lambda x: volume(g.problem, x))(x))
g4 = np.asarray(jax.grad(lambda x: volume(in_slabs(g), x))(x))
out["grad"] = (np.abs(g4 - g1) / np.abs(g1)).tolist()
print(json.dumps(out))
"""


def test_shard_the_niche_model_in_slabs_exchanges_planes_and_matches_one_device():
    """The whole niche model (32 fields, M1-M18: the implicit oxygen, lactate and drug
    solves, the cells' transport, the mixture flow's Poisson solve and its window of 3
    voxels) on an organoid of 16³ voxels in four slabs of 4, float32, 24 steps: the
    compiled run exchanges one plane of a group's channels per pass (3 planes of one
    field for the window), agrees on at most a number per field (sums, the guard's
    flags) and gathers only the multigrids' level of 4³ cells (1/64 of a field), in one
    order on every device; the state equals one device's within 1e-6 of its largest
    value (measured 8e-8 and, without x64 enabled, 2.5e-7) and each field within 1e-5
    of its own (measured 5.2e-7 and 6.4e-7, ccl2: the couplings amplify round-off about
    tenfold, see the run test below). The gradient of a 12³ organoid's tumour volume
    after 12 steps (float64) with respect to the division rate, the oxygen uptake and
    the tissue mobility equals one device's within 1e-10 relative in each component
    (measured 4e-16, 2e-16 and 3e-14, the last of a derivative 1e10 times smaller)."""
    r = run_on_devices(NICHE)
    kinds = {k for k, _ in r["ops"]}
    assert "collective-permute" in kinds and kinds <= {"collective-permute", "all-reduce",
                                                       "all-gather"}, kinds
    # the largest groups: 13 cell populations (a plane of 16 x 16 each), 5 drugs (their
    # multigrid's gathered level of 4³)
    assert max(n for k, n in r["ops"] if k == "collective-permute") <= 13 * 16 * 16, r["ops"]
    assert max(n for k, n in r["ops"] if k == "all-gather") <= 5 * 4 ** 3, r["ops"]
    assert max(n for k, n in r["ops"] if k == "all-reduce") <= 32, r["ops"]
    assert r["unordered"] == [], r["unordered"]
    assert r["grew"] > 0.01  # 24 steps of the model moved the fields
    assert r["state"] <= 1e-6, r["state"]
    assert max(r["fields"].values()) <= 1e-5, r["fields"]
    assert max(r["grad"]) <= 1e-10, r["grad"]


def assert_same_run(one, other) -> None:
    """The complete run file ``other`` holds the snapshots of ``one`` (a float64 run on one
    device) to round-off: each field within 1e-12 of its largest value, each observable
    within 1e-12 relative; and the tumour grew (the comparison is not of still fields)."""
    with h5py.File(one) as a, h5py.File(other) as b:
        np.testing.assert_array_equal(a["time"][...], b["time"][...])
        for name in a["fields"]:
            x, y = a["fields"][name][...], b["fields"][name][...]
            assert np.max(np.abs(x - y)) <= 1e-12 * np.max(np.abs(x)), name
        for name in a["observables"]:
            x, y = a["observables"][name][...], b["observables"][name][...]
            assert np.allclose(x, y, rtol=1e-12, atol=1e-12 * np.max(np.abs(x))), name
        assert read_status(b)[0] == "complete"
        assert not np.array_equal(a["fields/tumor"][0], a["fields/tumor"][-1])


@pytest.mark.slow  # about 2 minutes: 64³ a step takes 0.7 s on two processes
def test_shard_groups_exchange_in_one_order_on_every_process():
    """The organoid at 64³ in two slabs of 32 over two processes (one CPU device each),
    30 steps. XLA's CPU runtime starts a loop as soon as its inputs exist: two groups'
    transports (loops of exchanges) ran side by side and interleaved their exchanges in
    another order on each process, and Gloo aborted the job ("Received data size doesn't
    match expected size", 5 runs of 5 at this size before ``SlabStepper`` ran the
    groups in order). Every field agrees with one device within 1e-4 of its largest
    value (measured 1.0e-6): the implicit solves stop at a relative residual of 1e-5
    (``check_slabs``), and oxygen and lactate feed every rate."""
    r = json.loads(run_as_job(TWO_PROCESS_SLABS)[0].strip().splitlines()[-1])
    worst = max(zip(r["err"], r["names"]))
    assert worst[0] <= 1e-4, worst


SCENARIO_FILE = tmesim.__file__.replace("tmesim/__init__.py", "scenarios/untreated_niche.toml")
# the niche model on an organoid of 12³ voxels for half a day, float64, so that round-off is
# all there is to see: 8 snapshots, a checkpoint every 2
RUN_SETS = sum((["--set", s] for s in (
    "grid.n=12", "grid.spacing_um=40", "geometry.radius_um=120", "run.dt_min=5",
    "run.days=0.5", "run.output_every_days=0.0625", "run.checkpoint_every_days=0.125",
    "run.dtype=float64")), [])
CLI = [sys.executable, "-c", "import sys; from tmesim import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """The run of ``RUN_SETS`` in one process on one device: what a split run must give."""
    one = tmp_path_factory.mktemp("one") / "one.h5"
    done = subprocess.run(CLI + ["run", SCENARIO_FILE, "-o", str(one), "-q", *RUN_SETS],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return one


def test_shard_a_run_split_over_devices_resumes_on_another_count(tmp_path, one_device_run):
    """``tmesim run --devices 4``: the niche model on an organoid of 12³ voxels in four slabs
    of 3 (the mixture flow's window reaches 3 voxels), killed -9 between its first and
    second checkpoints, resumed with ``--devices 2`` (slabs of 6): every stored snapshot equals
    the same run on one device to round-off (``assert_same_run``; measured: 2e-15 after
    half a day; in float32 the same runs differ by up to 1.3e-6 of a small field's
    largest value, ccl2's: the model's couplings amplify round-off about tenfold in
    either precision)."""
    env = device_env(PYTHONUNBUFFERED="1", TMESIM_PROGRESS_SECONDS="0")
    split = tmp_path / "split.h5"
    proc = subprocess.Popen(CLI + ["run", SCENARIO_FILE, "-o", str(split), "--devices", "4",
                                   *RUN_SETS], stderr=subprocess.PIPE, text=True, env=env)
    start = time.time()
    for line in proc.stderr:  # progress lines: "  day   0.19 of 0.5 ..." (0.12 at 0.125)
        if line.split()[:1] == ["day"] and float(line.split()[1]) >= 0.125:
            break
        assert time.time() - start < 600
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with h5py.File(split) as h5:  # killed mid-run, with its first checkpoint
        assert read_status(h5)[0] == "running"
        written = snapshot_count(h5)
    done = subprocess.run(CLI + ["resume", str(split), "-q", "--devices", "2"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_run(one_device_run, split)
    assert 3 <= written < 9  # snapshots up to day 0.125 at least, not all


def cli_job(*args: str, devices: int, cwd=(None, None)) -> list:
    """``tmesim ARGS --distributed`` started as the two processes of one job on this
    machine, ``devices`` CPU devices each, in the folders ``cwd``; progress lines on their
    standard errors."""
    port = free_port()
    return [subprocess.Popen(CLI + [*args, "--distributed"], stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, cwd=cwd[rank], env=device_env(
        devices, PYTHONUNBUFFERED="1", TMESIM_PROGRESS_SECONDS="0",
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(rank))) for rank in (0, 1)]


def finish(procs) -> list:
    """(exit code, standard error) of each process of a job."""
    try:
        return [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    finally:
        for p in procs:  # one left alone would wait for its partner
            p.kill()


@pytest.mark.parametrize("uninterrupted", [
    False, pytest.param(True, marks=pytest.mark.slow)])  # and the job without a stop
def test_shard_a_run_over_two_processes_stops_and_resumes_together(tmp_path, one_device_run,
                                                                   uninterrupted):
    """``tmesim run --distributed --devices 0``: two processes of two CPU devices each,
    joined by ``jax.distributed`` (the multi-host recipe of docs/devices.md), run the
    organoid of 12³ voxels in four slabs of 3; process 0 writes the file, gathering each
    snapshot from both. SIGTERM to process 1 alone stops both at the same snapshot
    (process 0 closes the file "interrupted"); ``tmesim resume --distributed`` on two
    processes finishes it. Every snapshot and observable equals one process on one
    device within 1e-12 of its largest value (float64; measured 1.3e-15 in the fields);
    with ``-m slow``, the same job run without a stop too, which the resumed file
    repeats bit for bit."""
    two = tmp_path / "two.h5"

    def job(*args):
        return cli_job(*args, devices=2)

    # every process must hold slabs: the default (one device) is refused by each, unwritten
    ended = finish(job("run", SCENARIO_FILE, "-o", str(two), *RUN_SETS))
    assert [code for code, _ in ended] == [2, 2], ended
    assert all("run.devices: devices = 1, but this job of 2 processes has 4 devices" in err
               for _, err in ended), ended
    assert not two.exists()
    procs = job("run", SCENARIO_FILE, "-o", str(two), "--devices", "0", *RUN_SETS)
    start = time.time()
    for line in procs[0].stderr:  # process 0's progress: "  day   0.19 of 0.5 ..." (0.12 at 0.125)
        if line.split()[:1] == ["day"] and float(line.split()[1]) >= 0.125:
            break
        assert time.time() - start < 600
    procs[1].send_signal(signal.SIGTERM)
    ended = finish(procs)
    assert [code for code, _ in ended] == [128 + signal.SIGTERM] * 2, ended
    assert "stopped by SIGTERM at day" in ended[0][1], ended[0][1][-2000:]
    with h5py.File(two) as h5:
        status, message = read_status(h5)
        written = snapshot_count(h5)
    assert status == "interrupted" and "SIGTERM" in message
    assert 3 <= written < 9, written  # stopped after day 0.125, before the end
    ended = finish(job("resume", str(two), "-q"))
    assert [code for code, _ in ended] == [0, 0], ended
    assert_same_run(one_device_run, two)
    if uninterrupted:
        full = tmp_path / "full.h5"
        ended = finish(job("run", SCENARIO_FILE, "-o", str(full), "--devices", "0", "-q",
                           *RUN_SETS))
        assert [code for code, _ in ended] == [0, 0], ended
        with h5py.File(full) as a, h5py.File(two) as b:
            for group in ("fields", "observables"):
                for name in a[group]:
                    np.testing.assert_array_equal(a[group][name][...], b[group][name][...])


@pytest.mark.slow  # about 5 minutes: each process compiles the fit's programs
def test_shard_a_fit_over_two_processes_stops_and_resumes_together(tmp_path):
    """``tmesim fit --distributed --devices 0``: two processes of one CPU device each,
    joined by ``jax.distributed``, fit a spheroid problem (two starts, the polish, a
    profile), each compiled call's batch split over the job's two devices; process 0
    writes the result. SIGTERM to process 1 alone during the polish stops both at the
    same write (process 0 marks the result "interrupted"); the fit resumed as a job
    completes it. Every dataset of the result equals the same fit in one process over two
    devices bit for bit: the processes make the same calls in the same order, and each
    call's outputs are gathered to every process, so the host's decisions are the same."""
    path = write_problem(
        tmp_path / "p", placeholder_measurements(days=(0.5, 1.0)),
        scenario=SCENARIO.format(kind="spheroid").replace("days = 2.0", "days = 1.0"),
        fit_settings='starts = 2\niterations = 3\npolish_iterations = 2\n'
                     'profiles = ["o2_uptake"]\nprofile_points = 1\nprofile_iterations = 2\n')
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    done = subprocess.run(CLI + ["fit", path, "-o", str(one), "-q", "--devices", "0"],
                          env=device_env(2), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    ended = finish(cli_job("fit", path, "-o", str(two), devices=1))
    assert [code for code, _ in ended] == [2, 2], ended  # every process must take a share
    assert all("[fit] devices: devices = 1, but this job of 2 processes" in err
               for _, err in ended), ended
    assert not two.exists()
    procs = cli_job("fit", path, "-o", str(two), "--devices", "0", devices=1)
    start = time.time()
    for line in procs[0].stderr:  # process 0's progress lines
        if "polish: iteration 1/2" in line:
            break
        assert time.time() - start < 600
    procs[1].send_signal(signal.SIGTERM)
    ended = finish(procs)
    assert [code for code, _ in ended] == [128 + signal.SIGTERM] * 2, ended
    with h5py.File(two) as h5:
        assert h5["meta"].attrs["status"] == "interrupted", dict(h5["meta"].attrs)
        assert "SIGTERM" in h5["meta"].attrs["message"]
        assert h5["meta"].attrs["stage"] in ("polish", "laplace", "profiles")
    stopped = tmp_path / "stopped.h5"
    shutil.copyfile(two, stopped)
    ended = finish(cli_job("fit", path, "-o", str(two), "-q", "--devices", "0", devices=1))
    assert [code for code, _ in ended] == [0, 0], ended

    def datasets(group, prefix=""):
        for key, item in group.items():
            if isinstance(item, h5py.Group):
                yield from datasets(item, prefix + key + "/")
            else:
                yield prefix + key, item[()]

    with h5py.File(one) as a, h5py.File(two) as b:
        assert b["meta"].attrs["status"] == "complete"
        mine, theirs = dict(datasets(a)), dict(datasets(b))
        assert sorted(mine) == sorted(theirs)
        assert "profiles/value" in mine and "polish/history" in mine, sorted(mine)
        for key, x in mine.items():  # NaN (a profile not asked for) equals NaN here
            np.testing.assert_array_equal(np.asarray(x), np.asarray(theirs[key]), err_msg=key)

    # a result each process reads from its own folder (a node-local copy): refused on both
    hosts = [tmp_path / "host0", tmp_path / "host1"]
    for host in hosts:
        host.mkdir()
    shutil.copyfile(two, hosts[0] / "r.h5")
    ended = finish(cli_job("fit", path, "-o", "r.h5", "--summarise", "--devices", "0",
                           devices=1, cwd=hosts))  # seen by process 0 only
    assert [code for code, _ in ended] == [2, 2], ended
    assert all("some processes of the job see this result" in err for _, err in ended), ended
    shutil.copyfile(stopped, hosts[1] / "r.h5")  # the same result, stopped earlier
    ended = finish(cli_job("fit", path, "-o", "r.h5", "--devices", "0", devices=1, cwd=hosts))
    assert [code for code, _ in ended] == [2, 2], ended
    assert all("read different results" in err for _, err in ended), ended
