"""Bad input (issue 14): every scenario or ``--set`` problem is a ScenarioError naming the
file, the key and what was expected; no traceback, no hang, no silent nonsense.

Each case of ``CASES`` failed before the fix, in one of three ways: a traceback
(OverflowError, ZeroDivisionError, RecursionError), a scenario accepted on load that
then hung or crashed while building (a diffusion bound of 1e30: the RKL stage count
loop; a lower bound of 0 on a constant that divides), or silent nonsense accepted (a
share of 5, an empty field list meaning all fields, a tumour in no voxel, a dose after
the end). Validation only: nothing here builds or runs a simulation.
"""

import math
import pathlib

import pytest

import tmesim._scenario as S
from tmesim import PARAMETERS, ScenarioError, load_scenario, main, scenario_from_text
from tmesim._parameters import DIFFUSION_MAX, DOMAINS, FRACTIONS, Bounds

SCENARIOS = pathlib.Path(__file__).resolve().parent.parent / "scenarios"
UNTREATED = SCENARIOS / "untreated_niche.toml"  # 24³ voxels of 30 um, radius 200, octant
CHEMO = SCENARIOS / "chemo_relapse.toml"  # one [[dose]] entry
GIB = 2**30
REAL_AVAILABLE_MEMORY = S.available_memory


@pytest.fixture(autouse=True)
def memory_24_gib(monkeypatch):
    """The memory check sees a 24 GiB machine with 24 GiB available, whatever runs the tests."""
    monkeypatch.setattr(S, "available_memory", lambda: (24 * GIB, "MemAvailable (test)"))


def message(path, overrides=()):
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return str(info.value)


DOSE_AFTER_END = 'dose=[{drug = "chemo", level_nM = 100.0, start_day = 20.0}]'
CASES = [
    # (id, scenario file, --set items, pieces the message must contain besides the file name)
    # tracebacks and hangs
    ("days-inf", UNTREATED, ["run.days=inf"], ["run.days", "expected a finite number"]),
    ("days-1e12", UNTREATED, ["run.days=1e12"], ["run.days", "at most 1e+07 steps"]),
    ("days-huge-int", UNTREATED, ["run.days=1" + "0" * 400], ["run.days", "expected a number"]),
    ("dt-inf", UNTREATED, ["run.dt_min=inf"], ["run.dt_min", "expected a finite number"]),
    ("dt-1e-9", UNTREATED, ["run.dt_min=1e-9"],
     ["run.output_every_days", "at most 1e+07 steps", "--set run.dt_min=1e-9"]),
    ("dt-above-a-day", UNTREATED, ["run.dt_min=2880", "run.output_every_days=2",
                                         "run.checkpoint_every_days=2"],
     ["run.dt_min", "at most 1440 min"]),
    ("output-inf", UNTREATED, ["run.output_every_days=inf"],
     ["run.output_every_days", "expected a finite number"]),
    ("checkpoint-inf", UNTREATED, ["run.checkpoint_every_days=inf"],
     ["run.checkpoint_every_days", "expected a finite number"]),
    ("grid-1024", UNTREATED, ["grid.n=1024"],
     ["grid.n", "needs about 1536.0 GiB", "24.0 GiB are available", "expected grid.n <= 256"]),
    ("o2-uptake-k-0", UNTREATED, ["parameters.o2_uptake_k=0"],
     ["parameters.o2_uptake_k", "expected a value > 0", "Michaelis"]),
    ("o2-uptake-k-bounds-0", UNTREATED,
     ["bounds.o2_uptake_k=[0.0, 10.0]", "parameters.o2_uptake_k=0.5"],
     ["bounds.o2_uptake_k", "expected a value > 0"]),
    ("packing-bound-1", UNTREATED, ["bounds.packing_fraction=[0.6, 1.0]"],
     ["bounds.packing_fraction", "> 0 and < 1"]),
    ("diffusion-1e30", UNTREATED, ["diffusion.oxygen=1e30"],
     ["diffusion.oxygen", "at most 1e+06 um^2/min"]),
    ("diffusion-bound-1e30", UNTREATED,
     ["bounds.diffusion.oxygen=[5e4, 1e30]", "diffusion.oxygen=1e5"],
     ["bounds.diffusion.oxygen", "at most 1e+06 um^2/min"]),
    ("deep-toml-value", UNTREATED, ["run.days=" + "[" * 5000],
     ["run.days", "expected a number"]),
    # silent nonsense
    ("progenitor-terminal-5", UNTREATED, ["parameters.progenitor_terminal=5"],
     ["parameters.progenitor_terminal", "between 0 and 1"]),
    ("self-renewal-base-5", UNTREATED, ["parameters.self_renewal_base=5"],
     ["parameters.self_renewal_base", "between 0 and 1"]),
    ("anti-pd1-max-5", UNTREATED, ["parameters.anti_pd1_max=5"],
     ["parameters.anti_pd1_max", "between 0 and 1"]),
    ("exosome-inhibitor-max-5", UNTREATED, ["parameters.exosome_inhibitor_max=5"],
     ["parameters.exosome_inhibitor_max", "between 0 and 1"]),
    ("packing-0", UNTREATED, ["parameters.packing_fraction=0"],
     ["parameters.packing_fraction", "> 0 and < 1"]),
    ("o2-reference-0", UNTREATED, ["parameters.o2_reference=0"],
     ["parameters.o2_reference", "expected a value > 0"]),
    ("hypoxic-ramp-reversed", UNTREATED, ["parameters.o2_hypoxic_saturation=20"],
     ["parameters", "o2_hypoxic_threshold > o2_hypoxic_saturation"]),
    ("radius-1", UNTREATED, ["geometry.radius_um=1"],
     ["geometry.radius_um", "fills less than one voxel", "30 um", "radius_um >= 37.2 um"]),
    ("spacing-1e6", UNTREATED, ["grid.spacing_um=1e6"],
     ["geometry.radius_um", "fills less than one voxel", "1e+06 um", "radius_um >= 1.24e+06",
      "--set grid.spacing_um=1e6"]),
    ("spacing-below-1-um", UNTREATED, ["grid.spacing_um=0.5", "geometry.radius_um=5"],
     ["grid.spacing_um", "at least 1 um"]),
    ("dose-after-end", UNTREATED, [DOSE_AFTER_END],
     ["dose[0].start_day", "within the run (0 to 10 days)", "day 20"]),
    ("doses-repeat-past-end", CHEMO, ["dose.0.count=50", "dose.0.every_days=1"],
     ["dose[0].every_days", "within the run"]),
    ("fields-empty", UNTREATED, ["run.fields=[]"],
     ["run.fields", "omit the key to store all fields"]),
    ("fields-twice", UNTREATED, ['run.fields=["tumor", "tumor"]'],
     ["run.fields[1]", "listed twice"]),
    ("level-inf", UNTREATED, ['dose=[{drug = "chemo", level_nM = inf}]'],
     ["dose[0].level_nM", "expected a finite number"]),
    ("level-float32-overflow", UNTREATED, ['dose=[{drug = "chemo", level_nM = 1e39}]'],
     ["dose[0].level_nM", "float32 holds"]),
    ("parameter-float32-overflow", UNTREATED,
     ["bounds.o2_uptake=[0.0, 1e39]", "parameters.o2_uptake=1e39"],
     ["float32 holds"]),
    ("medium-o2-1e6", UNTREATED, ["geometry.medium.oxygen=1e6"],
     ["geometry.medium.oxygen", "between 0 and 760"]),
    ("half-life-1e-300", CHEMO, ["dose.0.half_life_days=1e-300"],
     ["dose[0].half_life_days", "between 1e-06 and inf"]),
    ("radiotherapy-1e6-gy", UNTREATED, ["radiotherapy=[{day = 1.0, dose_gy = 1e6}]"],
     ["radiotherapy[0].dose_gy", "between 0 and 100"]),
    # weak --set messages
    ("set-index-past-end", CHEMO, ["dose.5.level_nM=1"],
     ["--set 'dose.5.level_nM=1'", "dose has 1 entry (indices 0 to 0)"]),
    ("set-index-no-doses", UNTREATED, ["dose.5.level_nM=1"],
     ["--set 'dose.5.level_nM=1'", "no [[dose]] entries"]),
    ("set-empty-key", UNTREATED, ["=1"], ["--set '=1'", "expected a dotted key"]),
    ("set-empty-segment", UNTREATED, ["run..days=1"], ["--set 'run..days=1'", "dotted key"]),
]


@pytest.mark.parametrize("path, overrides, pieces", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_names_file_key_and_expectation(path, overrides, pieces):
    text = message(path, overrides)
    assert text.startswith(str(path) + ": "), text
    for piece in pieces:
        assert piece in text, text


def test_a_binary_file_is_named(tmp_path):
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"name = \"x\"\n\xff\xfe\x00\x01 garbage")
    text = message(bad)
    assert text.startswith(f"{bad}: ") and "not UTF-8" in text and "offset 11" in text, text


def test_deeply_nested_toml_is_refused_not_a_recursion_error():
    with pytest.raises(ScenarioError, match=r"^deep\.toml: not valid TOML"):
        scenario_from_text("a = " + "[" * 100_000, "deep.toml")


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_every_parameter_outside_its_domain_is_refused(name):
    """Shares above 1, constants that divide at 0, rates below 0 ... whatever the bounds."""
    d = DOMAINS[name]
    outside = d.lower if d.lower_open else d.lower - 0.5
    text = message(UNTREATED, [f"parameters.{name}={outside!r}"])
    assert f"parameters.{name}: expected a value {d.text}" in text, text
    if math.isfinite(d.upper):
        above = d.upper if d.upper_open else d.upper + 0.5
        assert f"expected a value {d.text}" in message(UNTREATED, [f"parameters.{name}={above!r}"])


def test_fractions_are_the_shares_of_the_table():
    """Every parameter whose meaning is a share, fraction or probability is held to [0, 1]."""
    for q in PARAMETERS:
        words = q.meaning.lower()
        if q.name in FRACTIONS:
            assert DOMAINS[q.name].text == "between 0 and 1"
        elif q.unit == "1" and ("share" in words or "fraction of" in words):
            pytest.fail(f"{q.name}: {q.meaning!r} reads as a share; classify it in FRACTIONS")


def test_bounds_api_refuses_values_outside_the_domain():
    with pytest.raises(ValueError, match="o2_uptake_k.*> 0"):
        Bounds.default().override({"o2_uptake_k": (0.0, 10.0)})
    with pytest.raises(ValueError, match="diffusion.oxygen.*at most 1e\\+06"):
        Bounds.default().override({"diffusion.oxygen": (1.0, 10 * DIFFUSION_MAX)})


def test_memory_estimate_and_message(monkeypatch):
    n = 256  # the largest grid the fixture's 24 GiB hold in float32 (32 fields: exactly)
    assert S.run_memory(n, "float32") <= 24 * GIB < S.run_memory(n + 1, "float32")
    load_scenario(UNTREATED, [f"grid.n={n}", "geometry.radius_um=200"])
    text = message(UNTREATED, [f"grid.n={n}", 'run.dtype="float64"'])
    assert "grid.n" in text and "float64" in text and "(or dtype float32)" in text
    monkeypatch.setattr(S, "available_memory", lambda: None)  # unknown: not checked
    load_scenario(UNTREATED, ["grid.n=1024"])


def test_the_machines_memory_is_read():
    have, where = REAL_AVAILABLE_MEMORY()
    assert have > 0 and where


def test_set_errors_name_the_override():
    text = message(UNTREATED, ["grid.n=zero"])
    assert "grid.n: expected an integer" in text and "(set by --set grid.n=zero)" in text
    text = message(UNTREATED, ["name.x=1"])
    assert "--set 'name.x=1': name is a value" in text


def test_a_set_index_replaces_an_entry():
    sc = load_scenario(CHEMO, ['dose.0={drug = "chemo", level_nM = 50.0}'])
    assert sc.data["dose"][0]["level_nM"] == 50.0 and sc.data["dose"][0]["count"] == 1


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe")
    for args in (["run", str(bad)],
                 ["run", str(UNTREATED), "--set", "run.days=inf"],
                 ["run", str(CHEMO), "--set", "dose.5.level_nM=1"]):
        assert main(args + ["-o", str(tmp_path / "x.h5")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and args[1] in err, err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_scenario_file_still_loads(path, monkeypatch):
    monkeypatch.setattr(S, "available_memory", REAL_AVAILABLE_MEMORY)
    sc = load_scenario(path)
    assert sc.total_steps > 0 and sc.stored_fields


def test_valid_edge_values_still_load():
    """The limits themselves are accepted: shares of 0 and 1, an infinite half-life, a dose
    on the last day, the smallest tumour that fills a voxel."""
    load_scenario(UNTREATED, ["parameters.progenitor_terminal=1", "parameters.mixture_flow=0",
                              "geometry.radius_um=37.3", "bounds.initial.radius_um=[1.0, 720.0]",
                              'dose=[{drug = "chemo", level_nM = 1e9, start_day = 10.0, '
                              "half_life_days = inf}]"])
