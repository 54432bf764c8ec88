"""Property-based fuzzing of the run files given to ``tmesim inspect``, ``plot`` and ``resume``.

A real run file is copied and damaged the ways files get damaged: objects and
attributes deleted, attributes and small datasets rewritten with wrong types, shapes
or values (a snapshot count past the end or negative, checkpoint records that lie,
a status of raw bytes, NaN times), datasets replaced by others of another type or
shape, data overwritten with NaN or garbage, the file cut short. Property: each
command ends with exit code 0 or 2 (a message naming the file), never an exception,
and within ``CASE_SECONDS``. Byte-level damage to the file's structure (HDF5's own
headers) is not generated: the HDF5 library itself is not hardened against it.
Default run: 30 damaged files (90 commands); ``-m slow``: 400.
"""

import os
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import time_limit
from test_runs import TINY, UNTREATED

from tmesim import load_scenario, main, run_scenario

CASE_SECONDS = 120.0  # a resume that really runs compiles once (then it takes seconds)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ref.h5"
    sc = load_scenario(UNTREATED, TINY + ["run.days=1", "run.output_every_days=0.5"])
    run_scenario(sc, path, progress=None)
    return path


def _objects(path):
    names = []
    with h5py.File(path, "r") as h5:
        h5.visit(names.append)
    return sorted(names)


WEIRD = st.one_of(
    st.integers(-10**6, 10**6), st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 1e300]),
    st.text(max_size=8), st.binary(max_size=8),
    st.lists(st.integers(-3, 3), min_size=0, max_size=4).map(np.array),
)

MUTATION = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("attr"), st.integers(0, 10**6), st.sampled_from(
        ["format", "scenario", "overrides", "shape", "spacing", "copies", "dt_min", "units"]),
        WEIRD),
    st.tuples(st.just("write"), st.sampled_from(
        ["snapshots", "checkpoint/info", "time", "meta/status", "meta/message",
         "fields/tumor", "observables/tumor_radius", "checkpoint/a", "checkpoint/b"]),
        WEIRD),
    st.tuples(st.just("replace"), st.integers(0, 10**6), WEIRD),
    st.tuples(st.just("cut"), st.floats(0.0, 1.0)),
)


def _damage(path, objects, mutation):
    kind = mutation[0]
    if kind == "cut":
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(int(size * mutation[1]))
        return
    with h5py.File(path, "r+") as h5:
        if kind == "write":
            name, value = mutation[1], mutation[2]
            ds = h5.get(name)
            if ds is None:
                return
            try:
                arr = np.broadcast_to(np.asarray(value), ds.shape) if ds.shape else value
                ds[...] = arr
            except (TypeError, ValueError, OSError):
                ds[...] = np.nan if ds.dtype.kind == "f" else -7
            return
        name = objects[mutation[1] % len(objects)]
        if name not in h5:
            return
        if kind == "delete":
            del h5[name]
        elif kind == "attr":
            h5[name].attrs[mutation[2]] = mutation[3]
        elif kind == "replace":
            del h5[name]
            h5[name] = mutation[2]


def _check_commands(tmp_path, run_file, mutations, capsys):
    path = tmp_path / "d.h5"
    shutil.copy(run_file, path)
    objects = _objects(run_file)
    for m in mutations:
        if path.exists() and os.path.getsize(path) > 0:
            try:
                _damage(path, objects, m)
            except (OSError, KeyError, ValueError, TypeError, RuntimeError):
                break  # the file is already beyond h5py's reach: test what the commands say
    with time_limit(CASE_SECONDS):
        for args in (["inspect", str(path)],
                     ["plot", str(path), "-o", str(tmp_path / "d-plot.png"),
                      "--fields", "oxygen", "--observables", "tumor_radius"],
                     ["resume", str(path), "-q"]):
            code = main(args)
            err = capsys.readouterr().err
            assert code in (0, 2), (args, err)
            assert code == 0 or (str(path) in err and "Traceback" not in err), (args, err)
    for p in tmp_path.iterdir():
        p.unlink()


def _settings(n):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@_settings(30)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_damaged_run_files(tmp_path, run_file, capsys, mutations):
    _check_commands(tmp_path, run_file, mutations, capsys)


@pytest.mark.slow
@_settings(400)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_damaged_run_files_long(tmp_path, run_file, capsys, mutations):
    _check_commands(tmp_path, run_file, mutations, capsys)
