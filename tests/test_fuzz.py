"""Property-based fuzzing of scenario input (issue 14): TOML text and ``--set`` overrides.

Property: ``load_scenario`` / ``scenario_from_text`` either return a Scenario or raise
ScenarioError, and so does the cheap part of building the run (``tmesim._run.build``:
the schedule, the bounds, the transport plan, no compilation, grids of at most
``BUILD_MAX_N``³ voxels); any other exception fails, and so does a case that runs
past ``CASE_SECONDS`` (a SIGALRM timer, since hypothesis' deadline only measures a case
once it has finished, and a hang never does).

Inputs start from the real files in scenarios/: structural mutations of their parsed
tables (keys deleted, renamed or added, values replaced by numbers at the edges,
other types, nested structures), text mutations (lines dropped, duplicated or cut,
characters inserted), random bytes and random text, and ``--set`` items made of
real and broken paths with edge values. Derandomized (a fixed sequence of cases), so
CI is reproducible. Default run: 3 x 50 cases plus 100 of the stage count; ``-m slow``:
3 x 1000.
"""

import contextlib
import json
import math
import pathlib
import re
import signal
import tomllib
import warnings
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tmesim.kernels import rkl1_stages, rkl2_stages

import tmesim._scenario as S
from tmesim import MediumLayerWarning, ScenarioError, load_scenario, scenario_from_text
from tmesim._model import FIELD_NAMES, MOBILE, SOLUTES
from tmesim._parameters import PARAMETERS
from tmesim._run import build

SCENARIOS = pathlib.Path(__file__).resolve().parent.parent / "scenarios"
FILES = sorted(SCENARIOS.glob("*.toml"))
TEXTS = {p.name: p.read_text() for p in FILES}
TABLES = {name: tomllib.loads(text) for name, text in TEXTS.items()}
BUILD_MAX_N = 32  # build accepted scenarios up to 32³ voxels (0.05 s each, no compilation)
CASE_SECONDS = 20.0  # a case that takes longer hangs (each takes milliseconds)
DEADLINE = timedelta(seconds=10)  # generous: two engineers share 2 CPU cores


def fuzz_settings(n):
    # too_slow: each case may build a run plan (tens of ms, more on a loaded machine).
    return settings(max_examples=n, derandomize=True, database=None, deadline=DEADLINE,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def memory_24_gib():
    """The memory check sees 24 GiB, so which grids are accepted does not depend on the
    machine (and an accepted grid is built only up to BUILD_MAX_N anyway)."""
    real = S.available_memory
    S.available_memory = lambda: (24 * 2**30, "MemAvailable (test)")
    yield
    S.available_memory = real


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(load):
    """Run ``load()`` (a Scenario or ScenarioError) and, for a small accepted grid, build it."""
    outcome = _check(load)
    event(outcome)  # pytest --hypothesis-show-statistics: how many were refused, built
    return outcome


def _check(load):
    with time_limit(CASE_SECONDS):
        try:
            sc = load()
        except ScenarioError as err:
            assert str(err).strip(), "empty message"
            return "refused"
        assert isinstance(sc, S.Scenario)
        sc.schedule()
        assert sc.total_steps >= 1 and sc.stored_fields
        if sc.data["grid"]["n"] <= BUILD_MAX_N:
            try:
                with warnings.catch_warnings():  # the small grids built here cut the medium
                    warnings.simplefilter("ignore", MediumLayerWarning)  # layer, as expected
                    build(sc)
            except ScenarioError:
                return "refused by build"
            return "built"
        return "accepted"


# --------------------------------------------------------------------------
# values at the edges, and TOML text for any value
FLOATS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 5.0, 1e-300, 1e-9, 1e6, 1e12, 1e30, 1e39,
                          1e300, math.inf, -math.inf, math.nan, 2.0, 1440.0, 0.25])
INTS = st.sampled_from([0, 1, -1, 2, 3, 8, 24, 1000, 1001, 1024, 2**31, 2**63, 10**400])
LEAVES = st.one_of(
    FLOATS, INTS, st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
    st.booleans(), st.text(max_size=12),
    st.sampled_from(["organoid", "tissue", "chemo", "float64", "float32", "tumor", "oxygen",
                     "car_t", "wm793b"]))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
KEYS = ([q.name for q in PARAMETERS] + list(MOBILE) + list(SOLUTES) + list(FIELD_NAMES)
        + [k for schema in (S.TOP, S.RUN, S.GRID, S.GEOMETRY, S.DOSE, S.MEDIUM_CHANGE,
                            S.RADIOTHERAPY, S.INJECTION) for k in schema])


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_string(k)


def toml_string(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)  # escapes quotes, backslashes, control characters
    out = out.replace("\x7f", "\\u007f")
    return re.sub(r"[\ud800-\udfff]", "\ufffd", out)  # no lone surrogates in TOML


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return toml_string(str(v))  # dates and times: a string


def toml_text(table: dict) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())


# --------------------------------------------------------------------------
# mutations
@st.composite
def mutated_table(draw):
    table = json.loads(json.dumps(TABLES[draw(st.sampled_from(sorted(TABLES)))], default=str))
    for _ in range(draw(st.integers(1, 4))):
        node, path = table, []
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                       else range(len(node))))
            if not isinstance(node[key], (dict, list)):
                break
            node, path = node[key], path + [key]
        action = draw(st.sampled_from(["replace", "delete", "add", "rename", "wrap", "empty"]))
        if isinstance(node, list):
            if action == "delete" and node:
                node.pop(draw(st.integers(0, len(node) - 1)))
            elif action == "empty":
                node.clear()
            else:
                node.append(draw(VALUES))
            continue
        keys = sorted(node)
        key = draw(st.sampled_from(keys)) if keys else None
        if action == "replace" and key is not None:
            node[key] = draw(VALUES)
        elif action == "delete" and key is not None:
            del node[key]
        elif action == "rename" and key is not None:
            node[draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=10))] = node.pop(key)
        elif action == "wrap" and key is not None:
            node[key] = [node[key]]
        elif action == "empty" and key is not None:
            node[key] = draw(st.sampled_from([[], {}, "", 0]))
        else:
            node[draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=10))] = draw(VALUES)
    return table


@st.composite
def mutated_text(draw):
    text = TEXTS[draw(st.sampled_from(sorted(TEXTS)))]
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["drop", "duplicate", "cut", "insert", "swap"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if what == "drop" and lines:
            lines.pop(i)
        elif what == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif what == "cut" and lines:
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
        elif what == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(i, draw(st.text(max_size=30) | st.sampled_from(
                ["[run]\n", "[[dose]]\n", "days = inf\n", "n = 1024\n", "x = [[[[\n",
                 "radius_um = 1\n", "fields = []\n", '"\\u0000" = 1\n', "[bounds.diffusion]\n",
                 "oxygen = [0, 1e30]\n", "level_nM = 1e39\n"])))
    return "".join(lines)


SET_PATHS = (["run.days", "run.dt_min", "run.output_every_days", "run.checkpoint_every_days",
              "run.dtype", "run.fields", "run.seed", "grid.n", "grid.spacing_um",
              "geometry.kind", "geometry.radius_um", "geometry.octant", "geometry.csc_fraction",
              "geometry.medium.oxygen", "geometry.co_culture.cd8", "dose", "dose.0.level_nM",
              "dose.0.start_day", "dose.1.count", "dose.5.level_nM", "medium_change.0.day",
              "radiotherapy", "injection.0.amount", "cell_line", "name", "bounds.o2_uptake_k",
              "bounds.diffusion.oxygen", "bounds.initial.radius_um", "bounds.diffusion",
              "run", "", ".", "run..days", "dose.-1.x", "name.x", "run.fields.0"]
             + [f"parameters.{q.name}" for q in PARAMETERS[::7]]
             + [f"diffusion.{m}" for m in MOBILE[::5]])
SET_VALUES = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "0", "-1", "1e400", "1e39", "1e-300", "5", "0.5",
                     "1024", "[]", "{}", "[[[", '"x"', "true", "[0, 1e30]", "[0.0, 10.0]",
                     '[{drug = "chemo", level_nM = 1.0}]', '["tumor", "tumor"]', "",
                     "1" + "0" * 400, "[" * 3000, '{drug = "chemo"}']),
    FLOATS.map(lambda v: toml_value(v)), st.text(max_size=20))
PLAUSIBLE = st.sampled_from([  # items a user would write: most cases should still build
    "grid.n=8", "grid.n=12", "grid.spacing_um=40", "geometry.radius_um=120", "run.dt_min=5",
    "run.days=1", "run.output_every_days=0.25", "dose=[]", 'run.fields=["tumor", "oxygen"]',
    'run.dtype="float64"', "geometry.octant=false", "geometry.co_culture.cd8=0.02",
    "parameters.o2_uptake=1200", "bounds.o2_uptake=[0.0, 3000.0]", "diffusion.oxygen=1.2e5",
    'dose=[{drug = "chemo", level_nM = 500.0, start_day = 0.5, half_life_days = 0.2}]',
    "radiotherapy=[{day = 0.5, dose_gy = 2.0}]", 'cell_line="wm793b"', "run.seed=7",
    "geometry.medium.oxygen=40"])
SET_ITEMS = st.one_of(
    PLAUSIBLE, PLAUSIBLE,
    st.builds(lambda p, v: f"{p}={v}", st.sampled_from(SET_PATHS), SET_VALUES),
    st.text(max_size=30))


# --------------------------------------------------------------------------
def _text_case(text):
    return check(lambda: scenario_from_text(text, "fuzz.toml"))


def _bytes_case(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz_bytes.toml"
    path.write_bytes(data)
    return check(lambda: load_scenario(path))


TEXT_INPUTS = st.one_of(mutated_table().map(toml_text), mutated_text(),
                        st.text(max_size=200))
BYTE_INPUTS = st.one_of(st.binary(max_size=200),
                        mutated_text().map(lambda t: t.encode("utf-8")),
                        st.tuples(mutated_text(), st.binary(min_size=1, max_size=8)).map(
                            lambda tb: tb[0].encode("utf-8") + tb[1]))
OVERRIDES = st.tuples(st.sampled_from(FILES), st.lists(SET_ITEMS, min_size=1, max_size=4))


@fuzz_settings(50)
@given(TEXT_INPUTS)
def test_fuzz_scenario_text(text):
    _text_case(text)


@fuzz_settings(50)
@given(data=BYTE_INPUTS)
def test_fuzz_scenario_bytes(tmp_path_factory, data):
    _bytes_case(tmp_path_factory, data)


@fuzz_settings(50)
@given(OVERRIDES)
def test_fuzz_set_overrides(case):
    path, items = case
    check(lambda: load_scenario(path, items))


@pytest.mark.slow
@fuzz_settings(1000)
@given(TEXT_INPUTS)
def test_fuzz_scenario_text_long(text):
    _text_case(text)


@pytest.mark.slow
@fuzz_settings(1000)
@given(data=BYTE_INPUTS)
def test_fuzz_scenario_bytes_long(tmp_path_factory, data):
    _bytes_case(tmp_path_factory, data)


@pytest.mark.slow
@fuzz_settings(1000)
@given(OVERRIDES)
def test_fuzz_set_overrides_long(case):
    path, items = case
    check(lambda: load_scenario(path, items))


# --------------------------------------------------------------------------
def _counted(x, first, target):
    s = first
    while target(s) < x:
        s += 1
    return s


@settings(max_examples=100, derandomize=True, database=None)
@given(st.floats(-10.0, 1e5, allow_nan=False))
def test_rkl_stage_counts_match_counting_up(x):
    """The closed-form stage counts equal the old count-up loop's wherever it finishes."""
    assert rkl2_stages(x, 1.0) == _counted(x, 2, lambda s: (s * s + s - 2) / 2.0)
    assert rkl1_stages(x, 1.0) == _counted(x, 1, lambda s: s * s + s)


def test_rkl_stage_counts_of_huge_or_non_finite_steps():
    with time_limit(5.0):
        s = rkl2_stages(2.0, 1e30 * 12 / 30.0**2)  # D = 1e30 um²/min at 30 um: no hang
    assert (s * s + s - 2) // 2 >= 2.0 * 1e30 * 12 / 30.0**2 > ((s - 1) ** 2 + s - 3) // 2
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            rkl2_stages(1.0, bad)
        with pytest.raises(ValueError, match="finite"):
            rkl1_stages(1.0, bad)
