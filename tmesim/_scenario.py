"""Scenario files: TOML that fully determines a run, validated on load.

A scenario names the grid, the geometry and its initial cells, parameter and
diffusion overrides, treatments (drug doses with pharmacokinetics, medium
changes, radiotherapy, injected cells), the outputs and the seed. Everything
a run needs is in the text, so an output file that stores the text (and the
``--set`` overrides) can be resumed anywhere. Times are in days except the
step ``dt_min``; lengths in um; drug levels in nM. See scenarios/README.md.

Every problem is reported as a ``ScenarioError`` naming the file, the key and
what was expected; unknown keys get a did-you-mean.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field

from ._model import CELLS, DRUGS, FIELD_NAMES, MOBILE, ORGANOID_MEDIUM_O2, SOLUTES
from ._parameters import (
    CELL_LINES,
    GROUPS,
    PARAMETERS,
    domain_error,
    order_error,
)

MIN_PER_DAY = 1440.0
PARAMETER_NAMES = tuple(q.name for q in PARAMETERS)
DEFAULT_VALUES = {q.name: q.value for q in PARAMETERS}

# Limits of a run (each refused with its reason):
# - steps: the treatment schedule stores event steps as floats, exact below 2^24 in
#   float32 (``_treatment``); 1e7 steps are 38 years at dt = 2 min, or about 17 days
#   of computing at 0.15 s a step (an organoid octant of 32³ voxels on 2 CPU cores).
MAX_STEPS = 10_000_000
MAX_DT_MIN = MIN_PER_DAY  # a step longer than a day skips the fastest processes (T-cell
#   killing at 0.02/min, necrosis at 1/6 h) many times over
MIN_SPACING_UM = 1.0  # a tenth of a cell: below it volume fractions of cells mean nothing
MAX_EVENTS = 10_000  # repetitions of one kind of treatment (dose, medium change, ...)
MAX_LEVEL_NM = 1e9  # 1 M: above any drug's or cytokine's solubility
MAX_MEDIUM_O2 = 760.0  # mmHg: pure oxygen at one atmosphere
MAX_DOSE_GY = 100.0  # per fraction: above any clinical single fraction (radiosurgery 15-30 Gy)
MIN_HALF_LIFE_DAYS = 1e-6  # 0.09 s: a shorter one clears the drug within any step
# Memory: the compiled chunk of steps (``tmesim.solve``) holds 10.1 states at its peak
# (XLA's buffer assignment, ``memory_analysis()``: the state in and out and 8.1 states of
# temporaries; measured for untreated_niche and exosome_inhibitor at 16³ and 32³, float32,
# 31 fields: 10.03 to 10.14); the host keeps one more (the snapshot it writes) and the
# observables' program a few planes: 12 states. The runtime (Python, JAX) is not added:
# the process validating the scenario has loaded it already, so MemAvailable excludes it.
# Not included either (not measured): XLA's memory while compiling, and a GPU's own memory.
MEMORY_STATES = 12


class ScenarioError(ValueError):
    """A scenario file (or a ``--set`` override) that cannot be run, with the reason."""


# --------------------------------------------------------------------------
# schema: table -> key -> (kind, required, default, check)
def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _fraction(v):
    return 0 <= v <= 1


NUMBER, INTEGER, STRING, BOOL, TABLE, STRINGS, TABLES = (
    "number", "integer", "string", "bool", "table", "strings", "tables")
_KIND_TEXT = {NUMBER: "a number", INTEGER: "an integer", STRING: "a string", BOOL: "true or false",
              TABLE: "a table", STRINGS: "a list of strings",
              TABLES: "[[table]] entries (a list of tables)"}
_CHECK_TEXT = {_positive: "> 0", _non_negative: ">= 0", _fraction: "between 0 and 1"}


def _between(lo, hi):
    def check(v):
        return lo <= v <= hi
    _CHECK_TEXT[check] = f"between {lo:g} and {hi:g}"
    return check


@dataclass(frozen=True)
class Key:
    kind: str
    required: bool = False
    default: object = None
    check: object = None
    choices: tuple = ()
    help: str = ""
    infinite: bool = False  # NUMBER: +inf allowed (every other number must be finite)


RUN = {
    "days": Key(NUMBER, True, check=_positive, help="simulated time"),
    "dt_min": Key(NUMBER, False, 2.0, _positive, help="time step (min), at most a day"),
    "output_every_days": Key(NUMBER, False, 0.5, _positive, help="snapshot interval"),
    "checkpoint_every_days": Key(NUMBER, False, None, _positive,
                                 help="checkpoint interval (a multiple of output_every_days)"),
    "dtype": Key(STRING, False, "float32", choices=("float32", "float64")),
    "fields": Key(STRINGS, False, None, help="fields stored in snapshots (default: all)"),
    "seed": Key(INTEGER, False, 0, _between(0, 2**63 - 1), help="random seed (tissue vessels)"),
    "devices": Key(INTEGER, False, 1, _between(0, 4096),
                   help="devices the grid is split over along x, one slab each (0: all; "
                        "grid.n a multiple of it); tmesim run --devices N sets it"),
}
GRID = {
    "n": Key(INTEGER, True, check=_between(3, 1024), help="voxels per axis (spheroid: shells)"),
    "spacing_um": Key(NUMBER, False, 20.0, _positive,
                      help="voxel size (spheroid: shell thickness)"),
}
GEOMETRY = {
    "kind": Key(STRING, True, choices=("organoid", "tissue", "spheroid"),
                help="spheroid: a spherical organoid, radially symmetric (grid.n shells of "
                     "grid.spacing_um; for tmesim.solve and calibration, not tmesim run)"),
    "radius_um": Key(NUMBER, False, 150.0, _positive, help="initial tumour radius"),
    "csc_fraction": Key(NUMBER, False, 0.05, _fraction, help="CSC share of the initial tumour"),
    "octant": Key(BOOL, False, True, help="organoid: simulate one eighth (mirror faces)"),
    "medium": Key(TABLE, False, {}, help="organoid: medium levels (oxygen mmHg, solutes nM)"),
    "co_culture": Key(TABLE, False, {},
                      help="organoid: cells seeded in the unstirred layer around it (volume fraction)"),
    "vessel_spacing_um": Key(NUMBER, False, 60.0, _positive, help="tissue: mean vessel spacing"),
    "vessel_density": Key(NUMBER, False, 0.03, _fraction, help="tissue: mean vessel fraction"),
    "stroma": Key(NUMBER, False, 0.3, _fraction, help="tissue: stromal cell fraction"),
    "periodic": Key(BOOL, False, False, help="tissue: periodic faces"),
}
DOSE = {
    "drug": Key(STRING, True, choices=DRUGS),
    "level_nM": Key(NUMBER, True, check=_between(0, MAX_LEVEL_NM),
                    help="plasma (tissue) or medium (organoid) level the dose gives"),
    "start_day": Key(NUMBER, False, 0.0, _non_negative),
    "count": Key(INTEGER, False, 1, _between(1, 1000), help="number of doses"),
    "every_days": Key(NUMBER, False, 0.0, _non_negative, help="interval between doses"),
    "duration_days": Key(NUMBER, False, 0.0, _non_negative,
                         help="0: bolus; > 0: infusion holding the level this long"),
    "half_life_days": Key(NUMBER, False, math.inf, _between(MIN_HALF_LIFE_DAYS, math.inf),
                          help="exponential clearance after the bolus or infusion; inf: none",
                          infinite=True),
}
MEDIUM_CHANGE = {
    "day": Key(NUMBER, True, check=_non_negative, help="medium replaced: drug levels drop to 0"),
    "count": Key(INTEGER, False, 1, _between(1, 1000)),
    "every_days": Key(NUMBER, False, 0.0, _non_negative),
    "medium": Key(TABLE, False, {}, help="organoid: the new medium's levels (oxygen mmHg, "
                                         "solutes nM); unlisted solutes keep their level"),
}
RADIOTHERAPY = {
    "day": Key(NUMBER, True, check=_non_negative),
    "dose_gy": Key(NUMBER, True, check=_between(0, MAX_DOSE_GY), help="Gy per fraction"),
    "count": Key(INTEGER, False, 1, _between(1, 1000), help="fractions"),
    "every_days": Key(NUMBER, False, 1.0, _non_negative),
}
INJECTION = {
    "field": Key(STRING, True, choices=CELLS, help="injected cells, e.g. car_t, msc_trail, cd8"),
    "day": Key(NUMBER, True, check=_non_negative),
    "amount": Key(NUMBER, True, check=_fraction,
                  help="volume fraction added (organoid: in its initial unstirred layer; tissue: at vessels)"),
    "count": Key(INTEGER, False, 1, _between(1, 1000)),
    "every_days": Key(NUMBER, False, 0.0, _non_negative),
}
TOP = {
    "name": Key(STRING, True),
    "description": Key(STRING, False, ""),
    "run": Key(TABLE, True),
    "grid": Key(TABLE, True),
    "geometry": Key(TABLE, True),
    "cell_line": Key(STRING, False, None, choices=tuple(CELL_LINES),
                     help="a cell line's parameter set (tmesim.CELL_LINES); [parameters] override it"),
    "parameters_file": Key(STRING, False, None,
                           help="a TOML file of [parameters] (and [diffusion]) values, such as "
                                "the RESULT.parameters.toml of tmesim fit; path relative to the "
                                "scenario; it overrides cell_line, and [parameters] override it"),
    "parameters": Key(TABLE, False, {}),
    "diffusion": Key(TABLE, False, {}),
    "bounds": Key(TABLE, False, {}),
    "dose": Key(TABLES, False, []),
    "medium_change": Key(TABLES, False, []),
    "radiotherapy": Key(TABLES, False, []),
    "injection": Key(TABLES, False, []),
}
SECTIONS = {"run": RUN, "grid": GRID, "geometry": GEOMETRY}
EVENT_LISTS = {"dose": DOSE, "medium_change": MEDIUM_CHANGE, "radiotherapy": RADIOTHERAPY,
               "injection": INJECTION}


# --------------------------------------------------------------------------
def _number(v) -> float | None:
    """v as a float, or None when it is no number (a bool, a string, an int too large)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


def _override_path(item: str) -> str:
    return ".".join(k.strip() for k in item.split("=", 1)[0].split("."))


def did_you_mean(name: str, known, cutoff: float = 0.6) -> str:
    """"; did you mean 'x'?" for the closest of ``known``, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    def __init__(self, source: str, overrides=()):
        self.source = source
        self.overrides = [(_override_path(o), o) for o in overrides if isinstance(o, str)]
        self.largest = math.inf  # the largest number the run's dtype holds (set from run.dtype)
        self.dtype = "float32"

    def fail(self, key: str, text: str, also=()):
        """Raise the ScenarioError for ``key``; the message names the --set items that set
        ``key`` or the keys in ``also`` (other keys the problem depends on)."""
        flats = [re.sub(r"\[(\d+)\]", r".\1", k) for k in (key, *also)]
        by = [o for path, o in self.overrides
              if any(path == f or f.startswith(path + ".") or path.startswith(f + ".")
                     for f in flats)]
        note = f" (set by --set {', '.join(by)})" if by else ""
        raise ScenarioError(f"{self.source}: {key}: {text}{note}")

    def unknown(self, key: str, name: str, known) -> None:
        hint = did_you_mean(name, known)
        where = f"{key}.{name}" if key else name
        self.fail(where, f"unknown key{hint} (expected one of: {', '.join(sorted(known))})")

    def finite(self, key: str, v, what: str, infinite: bool = False) -> float:
        """v as a float: a finite number the run's dtype holds (+inf too where ``infinite``)."""
        x = _number(v)
        if x is None or math.isnan(x) or (math.isinf(x) and not (infinite and x > 0)):
            self.fail(key, f"expected a finite number ({what}), got {v!r}")
        if abs(x) > self.largest and not math.isinf(x):
            self.fail(key, f"expected a number that {self.dtype} holds (at most "
                           f"{self.largest:.3g} in size; {what}), got {v!r}")
        return x

    def value(self, key: str, spec: Key, v):
        if spec.kind == NUMBER:
            ok = _number(v) is not None
            if ok:
                v = self.finite(key, v, spec.help or "a number", spec.infinite)
        elif spec.kind == INTEGER:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif spec.kind == STRING:
            ok = isinstance(v, str)
        elif spec.kind == BOOL:
            ok = isinstance(v, bool)
        elif spec.kind == STRINGS:
            ok = isinstance(v, list) and all(isinstance(s, str) for s in v)
        elif spec.kind == TABLES:
            ok = isinstance(v, list) and all(isinstance(s, dict) for s in v)
        else:
            ok = isinstance(v, dict)
        if not ok:
            self.fail(key, f"expected {_KIND_TEXT[spec.kind]}, got {_short(v)} "
                           f"({type(v).__name__})")
        if spec.choices and v not in spec.choices:
            close = difflib.get_close_matches(str(v), list(spec.choices), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(key, f"expected one of {', '.join(spec.choices)}; got {_short(v)}{hint}")
        if spec.check is not None and not spec.check(v):
            self.fail(key, f"expected a value {_CHECK_TEXT.get(spec.check, 'in range')}"
                      f"{' (' + spec.help + ')' if spec.help else ''}, got {v!r}")
        return v

    def table(self, key: str, data, schema: dict) -> dict:
        if not isinstance(data, dict):
            self.fail(key, f"expected a table [{key}], got {_short(data)}")
        for name in data:
            if name not in schema:
                self.unknown(key, name, schema)
        out = {}
        for name, spec in schema.items():
            where = f"{key}.{name}" if key else name
            if name in data:
                out[name] = self.value(where, spec, data[name])
            elif spec.required:
                self.fail(where, f"missing; expected {_KIND_TEXT[spec.kind]}"
                          f"{' (' + spec.help + ')' if spec.help else ''}")
            else:
                out[name] = spec.default
        return out

    def numbers(self, key: str, data: dict, known, check, what: str) -> dict:
        """{name: number} with names from ``known``; ``check(name, v)``: None or why not."""
        out = {}
        for name, v in data.items():
            if name not in known:
                self.unknown(key, name, known)
            x = self.finite(f"{key}.{name}", v, what)
            why = check(name, x)
            if why:
                self.fail(f"{key}.{name}", why)
            out[name] = x
        return out


def _short(v, limit: int = 200) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _steps(check: _Checker, key: str, days: float, dt: float) -> int:
    """A time in days as a whole number of steps of dt minutes (or a clear error)."""
    n = days * MIN_PER_DAY / dt
    if not math.isfinite(n) or n > MAX_STEPS:
        check.fail(key, f"{days:g} days is {n:.3g} time steps of dt_min = {dt:g} min; expected "
                        f"at most {MAX_STEPS:.0e} steps (a shorter run, or a larger dt_min)",
                   ("run.dt_min",))
    k = round(n)
    if abs(n - k) > 1e-6 * max(1.0, n):
        check.fail(key, f"expected a whole number of time steps of dt_min = {dt:g} min; "
                        f"{days:g} days is {n:.4f} steps", ("run.dt_min",))
    return k


# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A validated scenario: the parsed tables with defaults filled in, and the source text."""

    source: str  # file name (for messages)
    text: str  # the TOML text as written
    overrides: tuple[str, ...]  # "--set key=value" items applied on top
    data: dict = field(repr=False)
    parameters_file: tuple[str, str] | None = None  # (path, text) of the named parameters_file

    # -- derived quantities -------------------------------------------------
    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def dt(self) -> float:
        return self.data["run"]["dt_min"]

    def steps(self, days: float) -> int:
        return round(days * MIN_PER_DAY / self.dt)

    @property
    def total_steps(self) -> int:
        return self.steps(self.data["run"]["days"])

    @property
    def output_steps(self) -> int:
        return self.steps(self.data["run"]["output_every_days"])

    @property
    def checkpoint_steps(self) -> int:
        return self.steps(self.data["run"]["checkpoint_every_days"])

    @property
    def stored_fields(self) -> tuple[str, ...]:
        return tuple(self.data["run"]["fields"] or FIELD_NAMES)

    def _times(self, kind: str):
        """(day, item) of every repetition of every [[kind]] entry, in time order."""
        key = "start_day" if kind == "dose" else "day"
        return sorted(((item[key] + j * item["every_days"], n, item)
                       for n, item in enumerate(self.data[kind]) for j in range(item["count"])),
                      key=lambda e: (e[0], e[1]))

    def schedule(self) -> dict:
        """The treatment schedule values (``tmesim.schedule``): doses, medium changes,
        radiotherapy fractions and injections, times as minutes or steps."""
        from ._treatment import schedule

        changes = self._times("medium_change")
        levels = {s: 0.0 for s in SOLUTES} | {"oxygen": ORGANOID_MEDIUM_O2}
        levels |= self.data["geometry"]["medium"]
        medium = []
        for day, _, item in changes:  # fresh medium: no drug unless listed
            levels = levels | {d: 0.0 for d in DRUGS} | item["medium"]
            medium.append((self.steps(day), dict(levels)))
        washes = [day * MIN_PER_DAY for day, _, _ in changes]
        doses = []
        for day, _, item in self._times("dose"):
            start = day * MIN_PER_DAY
            wash = next((c for c in washes if c > start), math.inf)
            doses.append((item["drug"], start, start + item["duration_days"] * MIN_PER_DAY,
                          item["level_nM"], math.log(2.0) / (item["half_life_days"] * MIN_PER_DAY),
                          wash))
        return schedule(
            doses, medium,
            [(self.steps(day), item["dose_gy"]) for day, _, item in self._times("radiotherapy")],
            [(self.steps(day), {item["field"]: item["amount"]})
             for day, _, item in self._times("injection")])

    @property
    def bounds(self) -> dict:
        """Bound overrides from the [bounds] table: {path: (lower, upper)}."""
        return dict(self.data["bounds"])


def parse_value(text: str):
    """A ``--set`` value: a TOML value (number, bool, string, list, inline table)
    or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # TOMLDecodeError, or an integer of > 4300 digits
        return text


def _entries(name: str, n: int) -> str:
    if n == 0:
        return (f"the scenario has no [[{name}]] entries; add them with --set "
                f"'{name}=[{{...}}]' or in the file")
    return f"{name} has {n} entr{'y' if n == 1 else 'ies'} (indices 0 to {n - 1})"


def apply_override(data: dict, item: str, source: str = "--set") -> None:
    """Apply one ``key.path=value`` override to the raw (unvalidated) tables.

    ``source`` names where the override came from (the scenario file) in messages.
    """
    where = f"{source}: --set {item!r}" if source != "--set" else f"--set {item!r}"
    if not isinstance(item, str) or "=" not in item:
        raise ScenarioError(f"{where}: expected key=value, e.g. run.days=3")
    path, text = item.split("=", 1)
    keys = [k.strip() for k in path.split(".")]
    if not all(keys):
        raise ScenarioError(f"{where}: expected a dotted key before '=', e.g. run.days=3 or "
                            f"dose.0.level_nM=500, got {path.strip()!r}")
    node = data
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        if depth == 0 and k in EVENT_LISTS and k not in node and not last:
            node[k] = []  # an absent [[dose]] list: no entries to index
        if isinstance(node, list):
            name = keys[depth - 1]
            if not k.isdigit() or int(k) >= len(node):
                raise ScenarioError(f"{where}: {name}: expected an index, got {k!r}; "
                                    f"{_entries(name, len(node))}")
            k = int(k)
            if last:
                node[k] = parse_value(text.strip())
                return
            node = node[k]
        elif last:
            node[k] = parse_value(text.strip())
            return
        else:
            node = node.setdefault(k, {})
        if not isinstance(node, (dict, list)):
            raise ScenarioError(f"{where}: {'.'.join(keys[:depth + 1])} is a value "
                                f"({_short(node)}), not a table")


def load_scenario(path, overrides=()) -> Scenario:
    """Read and validate a scenario file; ``overrides`` are ``key.path=value`` strings."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise ScenarioError(f"{source}: cannot read the scenario file ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScenarioError(
            f"{source}: not a text file: byte 0x{raw[err.start]:02x} at offset {err.start} is "
            f"not UTF-8; expected a scenario in TOML (UTF-8 text)") from None
    return scenario_from_text(text, source, overrides)


def parse_toml(text: str, source: str, error: type = ScenarioError) -> dict:
    """TOML text as a dict, or ``error`` naming ``source`` and what is wrong with the text."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise error(f"{source}: not valid TOML: {err}") from None
    except ValueError:  # Python's limit on converting digits to int
        raise error(f"{source}: not valid TOML here: an integer of more than 4300 "
                    f"digits") from None
    except RecursionError:
        raise error(f"{source}: not valid TOML here: arrays or tables nested too "
                    f"deeply") from None


def scenario_from_text(text: str, source: str = "<scenario>", overrides=(),
                       parameters_file: tuple[str, str] | None = None) -> Scenario:
    """Validate scenario TOML text (the text stored in output files).

    A ``parameters_file`` the scenario names is read from disk beside
    ``source``, unless ``parameters_file`` gives its (path, text) as stored
    with a run (a resume then uses the values the run started with).
    """
    if not isinstance(text, str):
        raise ScenarioError(f"{source}: expected the scenario's TOML text, got "
                            f"{type(text).__name__}")
    raw = parse_toml(text, source)
    overrides = tuple(overrides)
    for item in overrides:
        apply_override(raw, item, source)
    name = raw.get("parameters_file") if isinstance(raw, dict) else None
    if not isinstance(name, str):  # absent; another type is reported by _validate
        parameters_file = None
    elif parameters_file is None:
        parameters_file = _read_parameters_file(source, name)
    data = _validate(raw, source, overrides, parameters_file)
    return Scenario(source, text, overrides, data, parameters_file)


def _read_parameters_file(source: str, name: str) -> tuple[str, str]:
    """(path, text) of the scenario's ``parameters_file``, relative to the scenario file."""
    path = os.path.join(os.path.dirname(source), os.path.expanduser(name))
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise ScenarioError(f"{source}: parameters_file: cannot read {path} "
                            f"({err.strerror}); expected a TOML file of [parameters]") from None
    try:
        return path, raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScenarioError(f"{source}: parameters_file: {path} is not a text file: byte "
                            f"0x{raw[err.start]:02x} at offset {err.start} is not UTF-8") from None


def _file_values(path: str, text: str, like: _Checker) -> tuple[dict, dict]:
    """The [parameters] and [diffusion] tables of a parameters file, checked as a scenario's;
    errors name the file."""
    check = _Checker(path)
    check.dtype, check.largest = like.dtype, like.largest
    top = check.table("", parse_toml(text, path),
                      {"parameters": TOP["parameters"], "diffusion": TOP["diffusion"]})
    return _value_tables(check, top)


def _value_tables(check: _Checker, top: dict) -> tuple[dict, dict]:
    """The checked [parameters] and [diffusion] tables of a scenario or parameters file."""
    return (check.numbers("parameters", check.value("parameters", TOP["parameters"],
                                                    top["parameters"]),
                          PARAMETER_NAMES, domain_error, "a model parameter"),
            check.numbers("diffusion", check.value("diffusion", TOP["diffusion"],
                                                   top["diffusion"]),
                          MOBILE, lambda name, v: domain_error(f"diffusion.{name}", v),
                          "a diffusion coefficient (um^2/min)"))


def _validate(raw: dict, source: str, overrides=(), parameters_file=None) -> dict:
    check = _Checker(source, overrides)
    top = check.table("", raw, TOP)
    data = {"name": top["name"], "description": top["description"], "cell_line": top["cell_line"]}
    for key, schema in SECTIONS.items():
        data[key] = check.table(key, top[key], schema)
        if key == "run":  # every later number must fit the run's dtype
            import numpy as np

            check.dtype = data["run"]["dtype"]
            check.largest = float(np.finfo(check.dtype).max)
    for key, schema in EVENT_LISTS.items():
        data[key] = [check.table(f"{key}[{j}]", item, schema) for j, item in enumerate(top[key])]
    data["parameters"], data["diffusion"] = _value_tables(check, top)
    if parameters_file is not None:  # the file under the scenario's own tables
        values, diffusion = _file_values(*parameters_file, check)
        data["parameters"] = values | data["parameters"]
        data["diffusion"] = diffusion | data["diffusion"]
    data["bounds"] = _bounds(check, check.value("bounds", TOP["bounds"], top["bounds"]))
    geo = data["geometry"]
    geo["medium"] = check.numbers("geometry.medium", geo["medium"], SOLUTES, _level,
                                  "a medium level")
    for j, item in enumerate(data["medium_change"]):
        item["medium"] = check.numbers(f"medium_change[{j}].medium", item["medium"], SOLUTES,
                                       _level, "a medium level")
    geo["co_culture"] = check.numbers(
        "geometry.co_culture", geo["co_culture"], CELLS,
        lambda name, v: None if 0 <= v <= 1 else f"expected a volume fraction between 0 and 1, "
                                                 f"got {v!r}", "a volume fraction")
    if geo["kind"] == "spheroid":
        for key in ("octant", "vessel_spacing_um", "vessel_density", "stroma", "periodic"):
            if key in top["geometry"]:
                what = "an octant's mirror planes" if key == "octant" else "a tissue"
                check.fail(f"geometry.{key}", f"not a key of a spheroid (radially symmetric: "
                                              f"the key is for {what}); remove it")
    _check_consistency(check, data)
    return data


def _level(name: str, v: float) -> str | None:
    """Why ``v`` cannot be a medium level of ``name`` (oxygen in mmHg, others nM), or None."""
    top, unit = (MAX_MEDIUM_O2, "mmHg: pure oxygen at one atmosphere") if name == "oxygen" \
        else (MAX_LEVEL_NM, "nM: 1 M, above any solute's solubility")
    if not 0 <= v <= top:
        return f"expected a level between 0 and {top:g} ({unit}), got {v!r}"
    return None


def _bounds(check: _Checker, table: dict) -> dict:
    """[bounds]: parameter = [lower, upper], or a [bounds.GROUP] table (diffusion, decay,
    medium, initial) of name = [lower, upper]."""
    known_groups = {"diffusion": MOBILE, "decay": SOLUTES, "medium": SOLUTES,
                    "initial": ("radius_um", "csc_fraction", "vessel_density", "stroma") + CELLS}
    out = {}

    def pair(key, path, v):
        ok = isinstance(v, list) and len(v) == 2
        if ok:
            lo, hi = (_number(x) for x in v)
            ok = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
        if not ok or lo > hi:
            check.fail(key, f"expected [lower, upper], two finite numbers with lower <= upper, "
                            f"got {_short(v)}")
        for x in (lo, hi):
            check.finite(key, x, "a bound")
            why = domain_error(path, x)
            if why is None and path.startswith("medium."):
                why = _level(path.split(".", 1)[1], x)
            if why:
                check.fail(key, f"{why}, in {_short(v)}")
        return lo, hi

    for name, v in table.items():
        if name in GROUPS:
            if not isinstance(v, dict):
                check.fail(f"bounds.{name}", f"expected a table [bounds.{name}] of "
                                             f"name = [lower, upper], got {_short(v)}")
            for key, w in v.items():
                if key not in known_groups[name]:
                    check.unknown(f"bounds.{name}", key, known_groups[name])
                out[f"{name}.{key}"] = pair(f"bounds.{name}.{key}", f"{name}.{key}", w)
        elif name in PARAMETER_NAMES:
            out[name] = pair(f"bounds.{name}", name, v)
        else:
            check.unknown("bounds", name, PARAMETER_NAMES + GROUPS)
    return out


def available_memory() -> tuple[int, str] | None:
    """(bytes of memory available to a new run, where the figure comes from), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            pages, size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
        if pages > 0 and size > 0:
            what = "free" if name == "SC_AVPHYS_PAGES" else "installed"
            return pages * size, f"{what} physical memory (os.sysconf)"
    return None


def run_memory(n: int, dtype: str) -> int:
    """Bytes a run of n³ voxels needs: ``MEMORY_STATES`` states of every field."""
    size = 8 if dtype == "float64" else 4
    return MEMORY_STATES * len(FIELD_NAMES) * n**3 * size


def _check_memory(check: _Checker, n: int, dtype: str) -> None:
    have = available_memory()
    need = run_memory(n, dtype)
    if have is None or need <= have[0]:
        return
    size = 8 if dtype == "float64" else 4
    state = len(FIELD_NAMES) * n**3 * size
    per = MEMORY_STATES * len(FIELD_NAMES) * size
    largest = int((have[0] / per) ** (1 / 3)) + 1
    while largest > 0 and run_memory(largest, dtype) > have[0]:
        largest -= 1
    gib = 2**30
    check.fail("grid.n", f"a run of {n}^3 voxels needs about {need / gib:.1f} GiB of memory "
                         f"({MEMORY_STATES} copies of the {state / gib:.2f} GiB state of "
                         f"{len(FIELD_NAMES)} {dtype} fields: the compiled steps' working "
                         f"copies and the snapshot being written), and "
                         f"{have[0] / gib:.1f} GiB are available ({have[1]}); expected "
                         f"grid.n <= {largest} here"
                         f"{' (or dtype float32)' if dtype == 'float64' else ''}", ("run.dtype",))


def _check_consistency(check: _Checker, data: dict) -> None:
    run, grid, geo = data["run"], data["grid"], data["geometry"]
    dt = run["dt_min"]
    if dt > MAX_DT_MIN:
        check.fail("run.dt_min", f"expected a time step of at most {MAX_DT_MIN:g} min (a day: "
                                 f"a longer one skips the fastest processes), got {dt:g}")
    if run["checkpoint_every_days"] is None:
        run["checkpoint_every_days"] = run["output_every_days"]
    out = _steps(check, "run.output_every_days", run["output_every_days"], dt)
    total = _steps(check, "run.days", run["days"], dt)
    ckpt = _steps(check, "run.checkpoint_every_days", run["checkpoint_every_days"], dt)
    for key, k in (("run.days", total), ("run.output_every_days", out),
                   ("run.checkpoint_every_days", ckpt)):
        if k < 1:
            check.fail(key, f"expected at least one time step of dt_min = {dt:g} min "
                            f"({dt / MIN_PER_DAY:.3g} days), got {run[key[4:]]:g} days",
                       ("run.dt_min",))
    if total % out:
        check.fail("run.days", f"expected a multiple of run.output_every_days "
                               f"({run['output_every_days']:g}), got {run['days']:g}")
    if ckpt % out:
        check.fail("run.checkpoint_every_days", f"expected a multiple of run.output_every_days "
                                                f"({run['output_every_days']:g}), got "
                                                f"{run['checkpoint_every_days']:g}")
    if run["fields"] is not None and not run["fields"]:
        check.fail("run.fields", "expected at least one field to store; omit the key to "
                                 "store all fields")
    for j, name in enumerate(run["fields"] or ()):
        if name not in FIELD_NAMES:
            close = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            check.fail(f"run.fields[{j}]", f"unknown field {name!r}{hint}")
        if name in run["fields"][:j]:
            check.fail(f"run.fields[{j}]", f"field {name!r} listed twice")
    h = grid["spacing_um"]
    if h < MIN_SPACING_UM:
        check.fail("grid.spacing_um", f"expected a voxel of at least {MIN_SPACING_UM:g} um (a "
                                      f"tenth of a cell; cells are volume fractions of a "
                                      f"voxel), got {h:g}")
    box = grid["n"] * h
    spheroid = geo["kind"] == "spheroid"
    copies = 8 if geo["kind"] == "organoid" and geo["octant"] else 1
    room = box if copies == 8 or spheroid else box / 2
    if spheroid:  # shells: no voxel-count or 3D memory limits
        if geo["radius_um"] >= room:
            check.fail("geometry.radius_um",
                       f"expected a tumour inside the spheroid's domain (radius < grid.n x "
                       f"grid.spacing_um = {room:g} um), got {geo['radius_um']:g}",
                       ("grid.n", "grid.spacing_um"))
        if geo["radius_um"] < h / 2:
            check.fail("geometry.radius_um",
                       f"expected a radius of at least half a shell ({h / 2:g} um), "
                       f"got {geo['radius_um']:g}", ("grid.spacing_um",))
    elif geo["radius_um"] >= room:
        check.fail("geometry.radius_um",
                   f"expected a tumour that fits the grid (radius < {room:g} um "
                   f"for {grid['n']} voxels of {h:g} um), "
                   f"got {geo['radius_um']:g}", ("grid.n", "grid.spacing_um", "geometry.octant"))
    smallest = h * (3.0 * copies / (4.0 * math.pi)) ** (1.0 / 3.0)
    if not spheroid and geo["radius_um"] < smallest:
        part = "one eighth of the ball (an octant)" if copies == 8 else "the ball"
        check.fail("geometry.radius_um",
                   f"a tumour of radius {geo['radius_um']:g} um fills less than one voxel of "
                   f"grid.spacing_um = {h:g} um (the grid holds {part}); expected "
                   f"radius_um >= {smallest:.3g} um, or voxels of at most "
                   f"{geo['radius_um'] / smallest * h:.3g} um",
                   ("grid.spacing_um", "geometry.octant"))
    if not spheroid:
        _check_memory(check, grid["n"], run["dtype"])
    if geo["kind"] == "tissue" and (geo["medium"] or geo["co_culture"]):
        which = "geometry.medium" if geo["medium"] else "geometry.co_culture"
        check.fail(which, "only an organoid has a medium; a tissue gets cells and drugs "
                          "through its vessels")
    values = DEFAULT_VALUES | CELL_LINES.get(data["cell_line"], ({},))[0] | data["parameters"]
    why = order_error(values)
    if why:
        check.fail("parameters", why, ("cell_line", "parameters_file"))
    for kind in ("dose", "medium_change", "radiotherapy", "injection"):
        events = sum(item["count"] for item in data[kind])
        if events > MAX_EVENTS:
            check.fail(kind, f"expected at most {MAX_EVENTS} {kind} events in all (count "
                             f"summed over the entries), got {events}")
        for j, item in enumerate(data[kind]):
            key = "start_day" if kind == "dose" else "day"
            first = item[key]
            last = first + (item["count"] - 1) * item["every_days"]
            if last > run["days"]:
                which = key if item["count"] == 1 else "every_days"
                check.fail(f"{kind}[{j}].{which}",
                           f"expected events within the run (0 to {run['days']:g} days); "
                           f"the {'only one' if item['count'] == 1 else 'last'} is at day "
                           f"{last:g}", (f"{kind}.{j}", "run.days"))
            if item["count"] > 1 and item["every_days"] <= 0:
                check.fail(f"{kind}[{j}].every_days", "expected a positive interval for "
                                                      f"count = {item['count']}")
            if kind in ("radiotherapy", "injection", "medium_change"):
                for r in range(item["count"]):
                    _steps(check, f"{kind}[{j}].{key}", first + r * item["every_days"], dt)
    if geo["kind"] == "tissue" and any(c["medium"] for c in data["medium_change"]):
        check.fail("medium_change.medium", "only an organoid has a medium")
