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
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_fit import SCENARIO, placeholder_measurements, write_problem

import tmesim

DEVICES = 4
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


def run_on_devices(script: str, *args: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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
with h5py.File(out) as h5:
    theta, value, grad = (h5[f"starts/{k}"][()] for k in ("theta", "value", "grad"))
one = Objective(tmesim.load_problem(problem))  # one device
v1, g1 = (np.asarray(x) for x in one.value_and_grad_batch(theta))
try:
    tmesim.fit(problem, f"{folder}/fit_8.h5", progress=None, settings={"devices": 8})
    refused = ""
except tmesim.ProblemError as e:
    refused = str(e)
print(json.dumps({
    "used": sorted(used), "starts": len(theta),
    "value": float(np.max(np.abs(v1 - value) / np.abs(v1))),
    "grad": float(np.max(np.abs(g1 - grad)) / np.max(np.abs(g1))),
    "refused": refused, "written": os.path.exists(f"{folder}/fit_8.h5")}))
"""


def test_shard_a_fit_over_devices_gives_the_result_of_one_device(tmp_path):
    """``[fit] devices = 4``: each compiled call of the starts is split over the four
    devices (a batch of four, one start on each); the NLL and gradient it stored for
    each start are what one device computes at the same point; more devices than the
    process has is refused, naming the setting, before anything is written."""
    path = write_problem(tmp_path / "p", placeholder_measurements(days=(0.5, 1.0)),
                         scenario=SCENARIO.format(kind="spheroid").replace("days = 2.0",
                                                                           "days = 1.0"),
                         fit_settings="starts = 4\niterations = 2\npolish_iterations = 0\n"
                                      "profiles = []\n")
    r = run_on_devices(FIT, path, str(tmp_path))
    assert r["used"] == [f"cpu:{i}" for i in range(DEVICES)], r["used"]
    assert r["starts"] == 4
    # the same points on one device: the same NLL and gradient to round-off (float64)
    assert r["value"] <= 1e-12 and r["grad"] <= 1e-10, (r["value"], r["grad"])
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
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(TWO_PROCESSES),
                               str(rank), str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-4000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:  # the other one would wait for its partner forever
            p.kill()
    assert [r["rows"] for r in results] == [[0, 2], [2, 4]]
    for r in results:
        assert r["processes"] == 2 and r["devices"] == 2 and r["gathered"] == 4
        assert r["differ"]
        assert r["err"] <= 1e-6, r["err"]
