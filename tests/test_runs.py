"""Running scenarios: validation messages, the command line, HDF5 layout, XDMF read back
by ParaView's reader, and kill -9 / resume reproducing the uninterrupted run bit for bit."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import held_open

from tmesim import (
    SOLUTES,
    RunError,
    ScenarioError,
    load_scenario,
    main,
    run_scenario,
    scenario_from_text,
)
from tmesim._output import latest_checkpoint, read_status, snapshot_count

SCENARIOS = pathlib.Path(__file__).resolve().parent.parent / "scenarios"
UNTREATED = SCENARIOS / "untreated_niche.toml"
TINY = ["grid.n=8", "grid.spacing_um=40", "geometry.radius_um=120", "run.dt_min=5"]

GOOD = """
name = "t"
[run]
days = 1.0
[grid]
n = 8
spacing_um = 40.0
[geometry]
kind = "organoid"
radius_um = 100.0
"""


def error_of(text, overrides=()):
    with pytest.raises(ScenarioError) as info:
        scenario_from_text(text, "bad.toml", overrides)
    return str(info.value)


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("[grid]", "[grdi]"), ["bad.toml", "grdi", "did you mean 'grid'"]),
    (GOOD.replace("days = 1.0", "dyas = 1.0"), ["run.dyas", "did you mean 'days'"]),
    (GOOD.replace("days = 1.0", "days = \"one\""), ["run.days", "expected a number", "'one'"]),
    (GOOD.replace("n = 8", "n = 8.5"), ["grid.n", "expected an integer"]),
    (GOOD.replace("n = 8", "n = 2"), ["grid.n", "2"]),
    (GOOD.replace("spacing_um = 40.0", "spacing_um = -40.0"), ["grid.spacing_um", "> 0"]),
    (GOOD.replace("days = 1.0\n", ""), ["run.days", "missing"]),
    (GOOD.replace("radius_um = 100.0", "radius_um = 400.0"),
     ["geometry.radius_um", "fits the grid"]),
    (GOOD.replace('kind = "organoid"', 'kind = "organiod"'),
     ["geometry.kind", "did you mean 'organoid'"]),
    (GOOD + "[diffusion]\noxygen = -1.0\n", ["diffusion.oxygen", "non-negative diffusion"]),
    (GOOD + "[diffusion]\noxygne = 1.0\n", ["diffusion.oxygne", "did you mean 'oxygen'"]),
    (GOOD + "[parameters]\no2_uptak = 1.0\n", ["parameters.o2_uptak", "did you mean 'o2_uptake'"]),
    (GOOD + "[[dose]]\ndrug = \"chemo\"\n", ["dose[0].level_nM", "missing"]),
    (GOOD + "[[dose]]\ndrug = \"cisplatin\"\nlevel_nM = 1.0\n",
     ["dose[0].drug", "expected one of"]),
    (GOOD + "[[radiotherapy]]\nday = 3.0\ndose_gy = 2.0\n",
     ["radiotherapy[0].day", "within the run"]),
    (GOOD.replace("days = 1.0", "days = 1.0\ndt_min = 7.0"),
     ["run.output_every_days", "whole number of time steps"]),
    (GOOD + "[[dose]\n", ["bad.toml", "not valid TOML"]),
])
def test_bad_scenarios_name_file_key_and_expectation(text, expected):
    message = error_of(text)
    for piece in expected:
        assert piece in message, message


def test_set_overrides_are_validated_too():
    assert "grid.n" in error_of(GOOD, ["grid.n=zero"])
    assert "expected key=value" in error_of(GOOD, ["grid.n"])
    sc = scenario_from_text(GOOD, "ok.toml", ["grid.n=10", "geometry.co_culture.cd8=0.02"])
    assert sc.data["grid"]["n"] == 10 and sc.data["geometry"]["co_culture"] == {"cd8": 0.02}


def test_a_medium_change_washes_drugs_out_of_the_medium():
    """Fresh medium carries no drug unless its table lists one; other levels carry over."""
    sc = scenario_from_text(GOOD, "ok.toml", [
        "geometry.medium={oxygen = 100.0, chemo = 50.0}",
        'medium_change=[{day = 0.25}, {day = 0.5, medium = {chemo = 20.0, oxygen = 15.0}}]'])
    medium = sc.schedule()["medium"]
    names = list(SOLUTES)
    levels = [dict(zip(names, row)) for row in np.asarray(medium["level"])[:2]]
    assert [(lv["oxygen"], lv["chemo"]) for lv in levels] == [(100.0, 0.0), (15.0, 20.0)]


def test_cli_bad_input_exits_2_with_one_paragraph(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[grid]", "[grdi]"))
    assert main(["run", str(bad), "-o", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bad.toml" in err and "did you mean 'grid'" in err
    assert not (tmp_path / "x.h5").exists()
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["inspect", str(bad)]) == 2
    assert main(["resume", str(tmp_path / "none.h5")]) == 2


def test_run_inspect_plot_and_file_layout(tmp_path, capsys):
    out = tmp_path / "u.h5"
    args = ["run", str(UNTREATED), "-o", str(out), "-q"]
    for s in TINY + ["run.days=1"]:
        args += ["--set", s]
    assert main(args) == 0
    for suffix in (".h5", ".xdmf", ".png"):
        assert out.with_suffix(suffix).stat().st_size > 0
    # an existing output is not overwritten
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    with h5py.File(out) as h5:
        meta = h5["meta"].attrs
        assert read_status(h5) == ("complete", "") and meta["format"] == 2
        assert ("untreated hypoxic niche" in meta["scenario"]
                and "grid.n=8" in list(meta["overrides"]))
        assert h5["time"].shape == (3,) and h5["time"][-1] == 1440.0
        tumor = h5["fields/tumor"]
        assert tumor.shape == (3, 8, 8, 8) and tumor.chunks is None  # contiguous, in place
        assert tumor.attrs["units"] == "volume fraction"
        assert h5["observables/tumor_radius"].shape == (3,)
        assert h5["params/o2_uptake"].attrs["unit"] == "mmHg/min"
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 snapshots, day 0 to 1" in text and "tumor_radius" in text
    # a file that a live run holds open for writing can still be inspected
    with held_open(out):
        assert main(["inspect", str(out)]) == 0
        assert "3 snapshots, day 0 to 1" in capsys.readouterr().out
    png = tmp_path / "p.png"
    assert main(["plot", str(out), "-o", str(png), "--fields", "oxygen,csc", "--days", "0,1"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(out), "--fields", "oxgen"]) == 2


def test_xdmf_sidecar_read_by_paraview_reader(tmp_path):
    """ParaView's XDMF reader (VTK's vtkXdmfReader) sees the same values as h5py."""
    # vtk comes with the test extra (pip install -e '.[test]'): no skip
    from vtkmodules import vtkIOXdmf2 as xdmf2
    from vtkmodules.util.numpy_support import vtk_to_numpy

    out = tmp_path / "x.h5"
    assert main(["run", str(UNTREATED), "-o", str(out), "-q"]
                + sum((["--set", s] for s in TINY + ["run.days=1"]), [])) == 0
    reader = xdmf2.vtkXdmfReader()
    reader.SetFileName(str(out.with_suffix(".xdmf")))
    reader.UpdateInformation()
    with h5py.File(out) as h5:
        times = h5["time"][...]
        for k, t in enumerate(times):
            reader.UpdateTimeStep(float(t))
            grid = reader.GetOutputDataObject(0)
            assert grid.GetDimensions() == (9, 9, 9)
            assert grid.GetSpacing() == (40.0, 40.0, 40.0)
            for name in ("tumor", "oxygen", "csc"):
                vtk_values = vtk_to_numpy(grid.GetCellData().GetArray(name))
                # VTK's x index runs fastest: our C-order (x, y, z) ravel
                np.testing.assert_array_equal(vtk_values, h5["fields"][name][k].ravel())
        assert not np.array_equal(h5["fields/oxygen"][0], h5["fields/oxygen"][-1])


def _tmesim(*args):
    return [sys.executable, "-c", "import sys; from tmesim import main; sys.exit(main())", *args]


def _full_and_killed(tmp_path, scenario, sets, day: float):
    """Run ``scenario`` to the end into full.h5, and again into killed.h5, killed -9 once
    its progress reports ``day``; returns (full, killed, env)."""
    full, killed = tmp_path / "full.h5", tmp_path / "killed.h5"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMESIM_PROGRESS_SECONDS="0")
    assert subprocess.run(_tmesim("run", str(scenario), "-o", str(full), *sets),
                          capture_output=True, env=env).returncode == 0
    proc = subprocess.Popen(_tmesim("run", str(scenario), "-o", str(killed), *sets),
                            stderr=subprocess.PIPE, text=True, env=env)
    start = time.time()
    for line in proc.stderr:  # progress lines: "  day   2.50 of 6 ..."
        if line.split()[:1] == ["day"] and float(line.split()[1]) >= day:
            break
        assert time.time() - start < 300
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return full, killed, env


@pytest.mark.slow  # the same property by default: test_reliability's kill -9 at three moments
def test_kill_and_resume_is_bit_identical(tmp_path):
    sets = sum((["--set", s] for s in TINY + ["run.dt_min=2", "run.days=6",
                                              "run.output_every_days=0.5",
                                              "run.checkpoint_every_days=1"]), [])
    full, killed, env = _full_and_killed(tmp_path, UNTREATED, sets, 2.0)
    with h5py.File(killed) as h5:  # readable, with every completed snapshot
        assert read_status(h5)[0] == "running"
        n = snapshot_count(h5)
        assert 1 <= n < 13
        assert np.isfinite(h5["fields/tumor"][n - 1]).all()
    assert subprocess.run(_tmesim("resume", str(killed), "-q"), capture_output=True,
                          env=env).returncode == 0
    with h5py.File(full) as a, h5py.File(killed) as b:
        assert read_status(b)[0] == "complete"
        np.testing.assert_array_equal(a["time"][...], b["time"][...])
        for name in a["fields"]:
            assert np.array_equal(a["fields"][name][...], b["fields"][name][...]), name
        for name in a["observables"]:
            assert np.array_equal(a["observables"][name][...], b["observables"][name][...]), name



def test_a_failing_run_stops_with_field_place_and_time(tmp_path):
    """A dose of 1e39 nM overflows float32. The validator refuses it in a scenario, so it is
    put into the validated scenario's data as a script could: the loop's status stops the
    run at the first non-finite state, naming the field, the voxel and the day, with the
    likely cause; the file keeps its snapshots and last good checkpoint, marked failed."""
    out = tmp_path / "f.h5"
    sc = load_scenario(UNTREATED, TINY + ["run.days=1", "run.checkpoint_every_days=0.5",
                                          'dose=[{drug = "chemo", level_nM = 1.0, '
                                          'start_day = 0.5}]'])
    sc.data["dose"][0]["level_nM"] = 1e39
    with pytest.raises(RunError) as info:
        run_scenario(sc, out, progress=None)
    err = str(info.value)
    assert "non-finite value" in err and "in chemo at voxel" in err and "day 0.5" in err
    assert "likely cause" in err
    with h5py.File(out) as h5:
        status, message = read_status(h5)
        assert status == "failed" and "chemo" in message and "likely cause" in message
        np.testing.assert_array_equal(h5["time"][:snapshot_count(h5)], [0.0, 720.0])
        assert latest_checkpoint(h5)[0] == 144
        assert np.isfinite(h5["fields/chemo"][:snapshot_count(h5)]).all()


def _with_parameters_file(tmp_path, values: str, own: str = "") -> pathlib.Path:
    (tmp_path / "fitted.parameters.toml").write_text(values)
    text = UNTREATED.read_text().replace(
        'name = "untreated hypoxic niche"',
        'name = "untreated hypoxic niche"\nparameters_file = "fitted.parameters.toml"')
    path = tmp_path / "scenario.toml"
    path.write_text(text + own)
    return path


def test_a_named_parameters_file_sets_values_under_the_scenarios_own(tmp_path):
    """defaults < cell_line < parameters_file < [parameters] < --set."""
    path = _with_parameters_file(
        tmp_path, "[parameters]\ntumor_division_rate = 0.0009\nnecrosis_rate = 0.004\n"
                  "[diffusion]\noxygen = 90000.0\n",
        "\n[parameters]\nnecrosis_rate = 0.005\n")
    sc = load_scenario(path)
    assert sc.data["parameters"]["tumor_division_rate"] == 0.0009
    assert sc.data["parameters"]["necrosis_rate"] == 0.005
    assert sc.data["diffusion"]["oxygen"] == 90000.0
    assert sc.parameters_file == (str(tmp_path / "fitted.parameters.toml"),
                                  (tmp_path / "fitted.parameters.toml").read_text())
    sc = load_scenario(path, ["parameters.tumor_division_rate=0.001"])
    assert sc.data["parameters"]["tumor_division_rate"] == 0.001


@pytest.mark.parametrize("values, expected", [
    (None, ["scenario.toml: parameters_file", "cannot read", "fitted.parameters.toml"]),
    ("[parameters]\ntumor_divison_rate = 0.001\n",
     ["fitted.parameters.toml: parameters.tumor_divison_rate", "did you mean "
      "'tumor_division_rate'"]),
    ("[parameters]\ntumor_division_rate = -1.0\n",
     ["fitted.parameters.toml: parameters.tumor_division_rate"]),
    ("[run]\ndays = 3\n", ["fitted.parameters.toml: run", "unknown key"]),
    ("[parameters\n", ["fitted.parameters.toml", "not valid TOML"]),
])
def test_a_bad_parameters_file_names_the_file_and_key(tmp_path, values, expected):
    path = _with_parameters_file(tmp_path, values or "")
    if values is None:
        (tmp_path / "fitted.parameters.toml").unlink()
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    for part in expected:
        assert part in str(info.value), str(info.value)


def test_resume_uses_the_parameters_file_the_run_started_with(tmp_path):
    """The run file keeps the named file's text: a run killed, its parameters file then
    edited, resumes bit for bit as the uninterrupted run with the original values."""
    path = _with_parameters_file(tmp_path, "[parameters]\ntumor_division_rate = 0.0011\n")
    sets = sum((["--set", s] for s in TINY + ["run.days=3", "run.output_every_days=0.5",
                                              "run.checkpoint_every_days=0.5"]), [])
    full, killed, env = _full_and_killed(tmp_path, path, sets, 1.0)
    (tmp_path / "fitted.parameters.toml").write_text("[parameters]\ntumor_division_rate = 0.002\n")
    with h5py.File(killed) as h5:
        assert read_status(h5)[0] == "running"
        assert h5["meta"].attrs["parameters_file"] == "[parameters]\ntumor_division_rate = 0.0011\n"
    assert subprocess.run(_tmesim("resume", str(killed), "-q"), capture_output=True,
                          env=env).returncode == 0
    with h5py.File(full) as a, h5py.File(killed) as b:
        assert read_status(b)[0] == "complete"
        for name in a["fields"]:
            assert np.array_equal(a["fields"][name][...], b["fields"][name][...]), name


@pytest.mark.parametrize("fitted", sorted(
    (SCENARIOS / "calibration").glob("*/fitted.parameters.toml")), ids=lambda p: p.parent.name)
def test_the_committed_fitted_parameter_sets_load_as_a_scenarios_parameters_file(fitted):
    text = GOOD.replace('name = "t"', f'name = "t"\nparameters_file = "{fitted.name}"')
    sc = scenario_from_text(text, str(fitted.parent / "predict.toml"))
    assert sc.data["parameters"]  # the file's [parameters] reached the scenario
    assert sc.parameters_file[1] == fitted.read_text()
