"""Jobs of several processes (issue 15, deliverable 5): two local CPU processes joined by
``jax.distributed``, as the multi-host recipe of docs/devices.md starts them; ``pytest -k
shard`` selects these with ``tests/test_shard.py``. Apart from it so that the two files'
minutes can go to the suite's two workers (``--dist loadfile``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from test_fit import SCENARIO, placeholder_measurements, write_problem
from test_shard import assert_same_run, device_env, free_port, run_as_job

import tmesim
from tmesim._output import read_status, snapshot_count

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


CLI = [sys.executable, "-c", "import sys; from tmesim import main; sys.exit(main())"]


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


def test_shard_a_run_over_two_processes_stops_and_resumes_together(tmp_path):
    """``tmesim run --distributed --devices 0``: two processes of two CPU devices each,
    joined by ``jax.distributed`` (the multi-host recipe of docs/devices.md), run the
    organoid of 12³ voxels in four slabs of 3; process 0 writes the file, gathering each
    snapshot from both. SIGTERM to process 1 alone stops both at the same snapshot
    (process 0 closes the file "interrupted"); ``tmesim resume --distributed`` on two
    processes finishes it. Every snapshot and observable equals one process on one
    device within 1e-12 of its largest value (float64; measured 1.3e-15 in the fields),
    and the same job run without a stop bit for bit."""
    scenario = tmesim.__file__.replace("tmesim/__init__.py", "scenarios/untreated_niche.toml")
    sets = sum((["--set", s] for s in (
        "grid.n=12", "grid.spacing_um=40", "geometry.radius_um=120", "run.dt_min=5",
        "run.days=0.5", "run.output_every_days=0.0625", "run.checkpoint_every_days=0.125",
        "run.dtype=float64")), [])
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    done = subprocess.run(CLI + ["run", scenario, "-o", str(one), "-q", *sets],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    def job(*args):
        return cli_job(*args, devices=2)

    # every process must hold slabs: the default (one device) is refused by each, unwritten
    ended = finish(job("run", scenario, "-o", str(two), *sets))
    assert [code for code, _ in ended] == [2, 2], ended
    assert all("run.devices: devices = 1, but this job of 2 processes has 4 devices" in err
               for _, err in ended), ended
    assert not two.exists()
    procs = job("run", scenario, "-o", str(two), "--devices", "0", *sets)
    start = time.time()
    for line in procs[0].stderr:  # process 0's progress lines: "  day   0.12 of 0.5 ..."
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
    assert_same_run(one, two)
    # the same job uninterrupted: the resumed file repeats it bit for bit
    full = tmp_path / "full.h5"
    ended = finish(job("run", scenario, "-o", str(full), "--devices", "0", "-q", *sets))
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
