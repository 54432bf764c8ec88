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
import tomllib
from dataclasses import dataclass, field

from ._model import CELLS, DRUGS, FIELD_NAMES, MOBILE, ORGANOID_MEDIUM_O2, SOLUTES
from ._parameters import CELL_LINES, GROUPS, PARAMETERS

MIN_PER_DAY = 1440.0
PARAMETER_NAMES = tuple(q.name for q in PARAMETERS)


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


@dataclass(frozen=True)
class Key:
    kind: str
    required: bool = False
    default: object = None
    check: object = None
    choices: tuple = ()
    help: str = ""


RUN = {
    "days": Key(NUMBER, True, check=_positive, help="simulated time"),
    "dt_min": Key(NUMBER, False, 2.0, _positive, help="time step (min)"),
    "output_every_days": Key(NUMBER, False, 0.5, _positive, help="snapshot interval"),
    "checkpoint_every_days": Key(NUMBER, False, None, _positive,
                                 help="checkpoint interval (a multiple of output_every_days)"),
    "dtype": Key(STRING, False, "float32", choices=("float32", "float64")),
    "fields": Key(STRINGS, False, None, help="fields stored in snapshots (default: all)"),
    "seed": Key(INTEGER, False, 0, _non_negative, help="random seed (tissue vessels)"),
}
GRID = {
    "n": Key(INTEGER, True, check=lambda v: 3 <= v <= 1024, help="voxels per axis"),
    "spacing_um": Key(NUMBER, False, 20.0, _positive, help="voxel size"),
}
GEOMETRY = {
    "kind": Key(STRING, True, choices=("organoid", "tissue")),
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
    "level_nM": Key(NUMBER, True, check=_non_negative,
                    help="plasma (tissue) or medium (organoid) level the dose gives"),
    "start_day": Key(NUMBER, False, 0.0, _non_negative),
    "count": Key(INTEGER, False, 1, lambda v: 1 <= v <= 1000, help="number of doses"),
    "every_days": Key(NUMBER, False, 0.0, _non_negative, help="interval between doses"),
    "duration_days": Key(NUMBER, False, 0.0, _non_negative,
                         help="0: bolus; > 0: infusion holding the level this long"),
    "half_life_days": Key(NUMBER, False, math.inf, _positive,
                          help="exponential clearance after the bolus or infusion"),
}
MEDIUM_CHANGE = {
    "day": Key(NUMBER, True, check=_non_negative, help="medium replaced: drug levels drop to 0"),
    "count": Key(INTEGER, False, 1, lambda v: 1 <= v <= 1000),
    "every_days": Key(NUMBER, False, 0.0, _non_negative),
    "medium": Key(TABLE, False, {}, help="organoid: the new medium's levels (oxygen mmHg, "
                                         "solutes nM); unlisted solutes keep their level"),
}
RADIOTHERAPY = {
    "day": Key(NUMBER, True, check=_non_negative),
    "dose_gy": Key(NUMBER, True, check=_non_negative),
    "count": Key(INTEGER, False, 1, lambda v: 1 <= v <= 1000, help="fractions"),
    "every_days": Key(NUMBER, False, 1.0, _non_negative),
}
INJECTION = {
    "field": Key(STRING, True, choices=CELLS, help="injected cells, e.g. car_t, msc_trail, cd8"),
    "day": Key(NUMBER, True, check=_non_negative),
    "amount": Key(NUMBER, True, check=_fraction,
                  help="volume fraction added (organoid: in its initial unstirred layer; tissue: at vessels)"),
    "count": Key(INTEGER, False, 1, lambda v: 1 <= v <= 1000),
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
class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, text: str):
        raise ScenarioError(f"{self.source}: {key}: {text}")

    def unknown(self, key: str, name: str, known) -> None:
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f"{key}.{name}" if key else name
        self.fail(where, f"unknown key{hint} (expected one of: {', '.join(sorted(known))})")

    def value(self, key: str, spec: Key, v):
        if spec.kind == NUMBER:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if ok:
                v = float(v)
                ok = not math.isnan(v)
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
            self.fail(key, f"expected {_KIND_TEXT[spec.kind]}, got {v!r} ({type(v).__name__})")
        if spec.choices and v not in spec.choices:
            close = difflib.get_close_matches(str(v), list(spec.choices), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(key, f"expected one of {', '.join(spec.choices)}; got {v!r}{hint}")
        if spec.check is not None and not spec.check(v):
            self.fail(key, f"expected a value {_CHECK_TEXT.get(spec.check, 'in range')}"
                      f"{' (' + spec.help + ')' if spec.help else ''}, got {v!r}")
        return v

    def table(self, key: str, data, schema: dict) -> dict:
        if not isinstance(data, dict):
            self.fail(key, f"expected a table [{key}], got {data!r}")
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
        out = {}
        for name, v in data.items():
            if name not in known:
                self.unknown(key, name, known)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                self.fail(f"{key}.{name}", f"expected a finite number ({what}), got {v!r}")
            if not check(v):
                self.fail(f"{key}.{name}", f"expected {what}, got {v!r}")
            out[name] = float(v)
        return out


def _steps(check: _Checker, key: str, days: float, dt: float) -> int:
    """A time in days as a whole number of steps of dt minutes (or a clear error)."""
    n = days * MIN_PER_DAY / dt
    k = round(n)
    if abs(n - k) > 1e-6 * max(1.0, n):
        check.fail(key, f"expected a whole number of time steps of dt_min = {dt:g} min; "
                        f"{days:g} days is {n:.4f} steps")
    return k


# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A validated scenario: the parsed tables with defaults filled in, and the source text."""

    source: str  # file name (for messages)
    text: str  # the TOML text as written
    overrides: tuple[str, ...]  # "--set key=value" items applied on top
    data: dict = field(repr=False)

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
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict, item: str, source: str = "--set") -> None:
    """Apply one ``key.path=value`` override to the raw (unvalidated) tables."""
    if "=" not in item:
        raise ScenarioError(f"{source}: {item!r}: expected key=value, e.g. run.days=3")
    path, text = item.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for depth, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ScenarioError(f"{source}: {path}: {'.'.join(keys[:depth])} has "
                                    f"{len(node)} entries; expected an index below {len(node)}")
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
        if not isinstance(node, (dict, list)):
            raise ScenarioError(f"{source}: {path}: {k} is a value, not a table")
    if isinstance(node, list):
        raise ScenarioError(f"{source}: {path}: expected an index and a key, e.g. dose.0.level_nM")
    node[keys[-1]] = parse_value(text.strip())


def load_scenario(path, overrides=()) -> Scenario:
    """Read and validate a scenario file; ``overrides`` are ``key.path=value`` strings."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise ScenarioError(f"{source}: cannot read the scenario file ({err.strerror})") from None
    return scenario_from_text(text, source, overrides)


def scenario_from_text(text: str, source: str = "<scenario>", overrides=()) -> Scenario:
    """Validate scenario TOML text (the text stored in output files)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{source}: not valid TOML: {err}") from None
    for item in overrides:
        apply_override(raw, item)
    return Scenario(source, text, tuple(overrides), _validate(raw, source))


def _validate(raw: dict, source: str) -> dict:
    check = _Checker(source)
    top = check.table("", raw, TOP)
    data = {"name": top["name"], "description": top["description"], "cell_line": top["cell_line"]}
    for key, schema in SECTIONS.items():
        data[key] = check.table(key, top[key], schema)
    for key, schema in EVENT_LISTS.items():
        data[key] = [check.table(f"{key}[{j}]", item, schema) for j, item in enumerate(top[key])]
    data["parameters"] = check.numbers(
        "parameters", check.value("parameters", TOP["parameters"], top["parameters"]),
        PARAMETER_NAMES, _non_negative, "a non-negative number")
    data["diffusion"] = check.numbers(
        "diffusion", check.value("diffusion", TOP["diffusion"], top["diffusion"]),
        MOBILE, _non_negative,
        "a non-negative diffusion coefficient (um^2/min)")
    data["bounds"] = _bounds(check, check.value("bounds", TOP["bounds"], top["bounds"]))
    geo = data["geometry"]
    geo["medium"] = check.numbers("geometry.medium", geo["medium"], SOLUTES, _non_negative,
                                  "a non-negative level")
    for j, item in enumerate(data["medium_change"]):
        item["medium"] = check.numbers(f"medium_change[{j}].medium", item["medium"], SOLUTES,
                                       _non_negative, "a non-negative level")
    geo["co_culture"] = check.numbers("geometry.co_culture", geo["co_culture"], CELLS, _fraction,
                                      "a volume fraction between 0 and 1")
    _check_consistency(check, data)
    return data


def _bounds(check: _Checker, table: dict) -> dict:
    """[bounds]: parameter = [lower, upper], or a [bounds.GROUP] table (diffusion, decay,
    medium, initial) of name = [lower, upper]."""
    known_groups = {"diffusion": MOBILE, "decay": SOLUTES, "medium": SOLUTES,
                    "initial": ("radius_um", "csc_fraction", "vessel_density", "stroma") + CELLS}
    out = {}

    def pair(key, v):
        ok = (isinstance(v, list) and len(v) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                      and math.isfinite(x) for x in v))
        if not ok or v[0] > v[1]:
            check.fail(key, f"expected [lower, upper], two finite numbers with lower <= upper, "
                            f"got {v!r}")
        return float(v[0]), float(v[1])

    for name, v in table.items():
        if name in GROUPS and isinstance(v, dict):
            for key, w in v.items():
                if key not in known_groups[name]:
                    check.unknown(f"bounds.{name}", key, known_groups[name])
                out[f"{name}.{key}"] = pair(f"bounds.{name}.{key}", w)
        elif name in PARAMETER_NAMES:
            out[name] = pair(f"bounds.{name}", v)
        else:
            check.unknown("bounds", name, PARAMETER_NAMES + GROUPS)
    return out


def _check_consistency(check: _Checker, data: dict) -> None:
    run, grid, geo = data["run"], data["grid"], data["geometry"]
    dt = run["dt_min"]
    if run["checkpoint_every_days"] is None:
        run["checkpoint_every_days"] = run["output_every_days"]
    out = _steps(check, "run.output_every_days", run["output_every_days"], dt)
    total = _steps(check, "run.days", run["days"], dt)
    ckpt = _steps(check, "run.checkpoint_every_days", run["checkpoint_every_days"], dt)
    if total % out:
        check.fail("run.days", f"expected a multiple of run.output_every_days "
                               f"({run['output_every_days']:g}), got {run['days']:g}")
    if ckpt % out:
        check.fail("run.checkpoint_every_days", f"expected a multiple of run.output_every_days "
                                                f"({run['output_every_days']:g}), got "
                                                f"{run['checkpoint_every_days']:g}")
    for j, name in enumerate(run["fields"] or ()):
        if name not in FIELD_NAMES:
            close = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            check.fail(f"run.fields[{j}]", f"unknown field {name!r}{hint}")
    box = grid["n"] * grid["spacing_um"]
    room = box if geo["kind"] == "organoid" and geo["octant"] else box / 2
    if geo["radius_um"] >= room:
        check.fail("geometry.radius_um",
                   f"expected a tumour that fits the grid (radius < {room:g} um "
                   f"for {grid['n']} voxels of {grid['spacing_um']:g} um), "
                   f"got {geo['radius_um']:g}")
    if geo["kind"] == "tissue" and (geo["medium"] or geo["co_culture"]):
        which = "geometry.medium" if geo["medium"] else "geometry.co_culture"
        check.fail(which, "only an organoid has a medium; a tissue gets cells and drugs "
                          "through its vessels")
    for kind in ("dose", "medium_change", "radiotherapy", "injection"):
        for j, item in enumerate(data[kind]):
            first = item.get("start_day", item.get("day"))
            key = "start_day" if "start_day" in item else "day"
            last = first + (item["count"] - 1) * item["every_days"]
            if kind != "dose" and last > run["days"]:
                check.fail(f"{kind}[{j}].{key}", f"expected events within the run "
                                                 f"(0 to {run['days']:g} days); the last is at "
                                                 f"day {last:g}")
            if item["count"] > 1 and item["every_days"] <= 0:
                check.fail(f"{kind}[{j}].every_days", "expected a positive interval for "
                                                      f"count = {item['count']}")
            if kind in ("radiotherapy", "injection", "medium_change"):
                for r in range(item["count"]):
                    _steps(check, f"{kind}[{j}].{key}", first + r * item["every_days"], dt)
    if geo["kind"] == "tissue" and any(c["medium"] for c in data["medium_change"]):
        check.fail("medium_change.medium", "only an organoid has a medium")
