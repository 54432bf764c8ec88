"""Calibration problems in PEtab's vocabulary: a TOML problem file and four tables.

A problem file names the scenario the model runs and four tables (TSV, or CSV
by the ``.csv`` extension), with PEtab's column names (https://petab.readthedocs.io,
format version 1), so that anyone who has written a PEtab problem can write one:

    measurements  observableId, simulationConditionId (or experimentId), time,
                  measurement; optional noiseParameters (";"-separated numbers or
                  parameter ids), replicateId, datasetId
    conditions    conditionId, optional conditionName; every other column is a
                  scenario key (``--set`` syntax: ``geometry.radius_um``,
                  ``medium_change.0.medium.oxygen``, ``cell_line``) or a model
                  parameter name; a cell holds a TOML value, empty: the scenario's
    observables   observableId, observableFormula, optional observableTransformation
                  (lin, log, log10), noiseFormula, noiseDistribution (normal,
                  laplace)
    parameters    parameterId, parameterScale (lin, log, log10, logit),
                  lowerBound, upperBound, nominalValue, estimate (0 or 1); optional
                  parameterName, objectivePriorType, objectivePriorParameters,
                  initializationPriorType, initializationPriorParameters

Where tmesim differs from PEtab (whose models are SBML ODEs): formulas are
arithmetic (+ − * / ** and exp, log, log10, sqrt) of numbers, model
observables (``tmesim.OBSERVABLES``), parameter ids and, in noise formulas,
``noiseParameterK_<observableId>``; a parameter id is either a model value
path (``tumor_division_rate``, ``initial.radius_um``, ``diffusion.oxygen``: set
in every condition) or a free parameter of the formulas (a noise level, a
scale); times are in the problem file's ``time_unit`` (day, hour or min);
``logit`` is a scale for shares in (0, 1).

Every error names the file, the row (the line number, header = 1) and the
column, and what was expected. Loading writes nothing.
"""

from __future__ import annotations

import ast
import csv
import difflib
import io
import math
import os
import re
import stat
from dataclasses import dataclass, field

import numpy as np

from ._observables import OBSERVABLES
from ._parameters import GROUPS, PARAMETERS
from ._scenario import (
    Scenario,
    ScenarioError,
    did_you_mean,
    load_scenario,
    parse_toml,
    parse_value,
)

PARAMETER_NAMES = tuple(q.name for q in PARAMETERS)
SCALES = ("lin", "log", "log10", "logit")
TRANSFORMS = ("lin", "log", "log10")
DISTRIBUTIONS = ("normal", "laplace")
PRIORS = ("uniform", "normal", "laplace", "logNormal", "parameterScaleUniform",
          "parameterScaleNormal", "parameterScaleLaplace")
TIME_UNITS = {"day": 1440.0, "hour": 60.0, "min": 1.0}
FUNCTIONS = ("exp", "log", "log10", "sqrt")
TABLES = ("measurements", "conditions", "observables", "parameters")
MAX_ROWS = 1_000_000
MAX_DEPTH = 100  # nesting of a formula (its evaluation recurses once per level)


class ProblemError(ValueError):
    """A calibration problem that cannot be fitted, with the file, row and column."""


# --------------------------------------------------------------------------
# settings of the fit ([fit] table of the problem file)
@dataclass(frozen=True)
class Setting:
    kind: type
    default: object
    check: object = None  # callable -> None or why not
    help: str = ""


def _in(*choices):
    return lambda v: None if v in choices else f"expected one of {', '.join(map(repr, choices))}"


def _at_least(lo, hi=None):
    if hi is None:
        return lambda v: None if v >= lo else f"expected at least {lo}"
    return lambda v: None if lo <= v <= hi else f"expected {lo} to {hi}"


def _positive(v):
    return None if v > 0 and math.isfinite(v) else "expected a positive number"


FIT_SETTINGS = {
    "optimizer": Setting(str, "lbfgs", _in("lbfgs", "adam"), "optax.lbfgs or optax.adam"),
    "starts": Setting(int, 4, _at_least(1, 10_000), "optimisations from different starting points"),
    "iterations": Setting(int, 60, _at_least(1, 100_000), "iterations per start at most"),
    "batch": Setting(int, 0, _at_least(0, 10_000),
                     "starts (and profile points) advanced together under vmap in one compiled "
                     "call; 0: one on a CPU, all starts on an accelerator"),
    "workers": Setting(int, 0, _at_least(0, 1024),
                       "compiled calls (batches of starts or profile points) run at once, each "
                       "on its own thread; 0: one per CPU core on a CPU, one on an accelerator"),
    "devices": Setting(int, 1, _at_least(0, 4096),
                       "devices each compiled call's batch is split over (the first of "
                       "jax.devices(); the batch rounded up to a multiple); 0: every device"),
    "seed": Setting(int, 0, _at_least(0), "random seed of the starting points"),
    "sampling": Setting(str, "lhs", _in("lhs", "prior"),
                        "starting points: Latin hypercube on the parameter scale, or prior draws"),
    "learning_rate": Setting(float, 0.05, _positive, "Adam's step on the parameter scale"),
    "tolerance": Setting(float, 1e-4, _positive,
                         "a start has converged when its largest gradient entry (parameter "
                         "scale) is below this"),
    "polish_iterations": Setting(int, 20, _at_least(0, 100_000),
                                 "trust-region Newton steps from the best start after the "
                                 "starts (the Hessian by differences of the exact gradient: 2P "
                                 "gradients a step); 0: none"),
    "restarts": Setting(int, 2, _at_least(0, 100),
                        "times the fit goes back to the polish from a profile point whose NLL "
                        "is below the optimum's (the profiles stop at that point, and are "
                        "laid out again from the new optimum); 0: never, the point is only "
                        "flagged"),
    "hierarchical": Setting(bool, False, None,
                            "set each noise parameter that is the whole noise formula of its "
                            "measurements to its closed-form optimum given the model (RMS or "
                            "mean absolute residual) instead of optimising it"),
    "profiles": Setting(list, None, None,
                        "parameter ids to profile (default: every estimated one)"),
    "profile_points": Setting(int, 4, _at_least(1, 1000),
                              "profile points on each side of the optimum"),
    "profile_iterations": Setting(int, 30, _at_least(1, 100_000),
                                  "iterations per profile point at most"),
    "dtype": Setting(str, "float64", _in("float32", "float64"),
                     "precision of the fit's simulations"),
    "checkpoints": Setting(int, 2, _at_least(1), "reverse-mode checkpoint levels of the solve"),
}


# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Formula:
    """A parsed arithmetic formula: its text, names and compiled evaluator."""

    text: str
    names: tuple[str, ...]
    tree: object = field(repr=False, compare=False)

    def __call__(self, env: dict, xp):
        return _evaluate(self.tree.body, env, xp)


_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
           ast.Pow: lambda a, b: a ** b}


def _evaluate(node, env, xp):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp):
        v = _evaluate(node.operand, env, xp)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, env, xp), _evaluate(node.right, env, xp))
    fn = {"exp": xp.exp, "log": xp.log, "log10": xp.log10, "sqrt": xp.sqrt}[node.func.id]
    return fn(_evaluate(node.args[0], env, xp))


def parse_formula(text: str) -> Formula:
    """Parse an arithmetic formula; raise ValueError with the reason."""
    text = text.strip()
    if not text:
        raise ValueError("expected a formula, got an empty cell")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {text[:60]!r}: expected arithmetic (+ - * / **) of "
                         f"numbers, names and {', '.join(FUNCTIONS)}") from None
    except (RecursionError, MemoryError):  # Python's parser, on deep nesting
        raise ValueError(f"cannot parse {text[:60]!r}...: nested more than {MAX_DEPTH} "
                         f"levels deep") from None
    depth, level = 0, [(tree.body, 1)]
    while level:
        node, d = level.pop()
        depth = max(depth, d)
        level.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    if depth > MAX_DEPTH:
        raise ValueError(f"{text[:60]!r}...: nested {depth} levels deep, expected at most "
                         f"{MAX_DEPTH}")
    names = []
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ValueError(f"{text[:60]!r}: {node.value!r} is not a number")
            try:
                float(node.value)
            except OverflowError:
                raise ValueError(f"{text[:60]!r}: the integer {str(node.value)[:20]}... is too "
                                 f"large for a float; write 1e308 or less") from None
        elif isinstance(node, ast.Name):
            names.append(node)
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                    and len(node.args) == 1 and not node.keywords):
                raise ValueError(f"{text!r}: only {', '.join(FUNCTIONS)} of one argument may be "
                                 f"called")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise ValueError(f"{text!r}: operator {type(node.op).__name__} is not allowed; "
                                 f"expected + - * / **")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise ValueError(f"{text!r}: operator {type(node.op).__name__} is not allowed")
        elif not isinstance(node, (ast.Load, ast.operator, ast.unaryop)):
            raise ValueError(f"{text!r}: {type(node).__name__} is not allowed; expected "
                             f"arithmetic of numbers and names")
    functions = {id(n.func) for n in ast.walk(tree.body) if isinstance(n, ast.Call)}
    names = tuple(dict.fromkeys(n.id for n in names if id(n) not in functions))
    return Formula(text, names, tree)


# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Observable:
    id: str
    formula: Formula
    transformation: str
    noise: Formula
    distribution: str
    row: int


@dataclass(frozen=True)
class Parameter:
    id: str
    scale: str
    lower: float
    upper: float
    nominal: float
    estimate: bool
    prior: tuple | None  # (type, (a, b)) objective prior
    init_prior: tuple | None  # (type, (a, b)) for prior sampling of starts
    name: str
    row: int

    @property
    def model(self) -> bool:
        """A model value (set in the simulation), not a free parameter of the formulas."""
        return is_model_path(self.id)


@dataclass(frozen=True)
class Condition:
    id: str
    name: str
    overrides: tuple[str, ...]  # "key=value" scenario overrides
    row: int


@dataclass(frozen=True)
class Measurements:
    """Columns of the measurement table (one entry per row)."""

    observable: np.ndarray  # index into FitProblem.observables
    condition: np.ndarray  # index into FitProblem.conditions
    time_min: np.ndarray
    value: np.ndarray
    noise: tuple  # per row: tuple of numbers or parameter ids (noiseParameters)
    replicate: tuple
    dataset: tuple
    row: np.ndarray  # line numbers

    def __len__(self):
        return len(self.value)


@dataclass(frozen=True)
class FitProblem:
    path: str
    name: str
    scenario_path: str
    scenario: Scenario
    overrides: tuple[str, ...]  # scenario overrides of every condition (problem file)
    time_unit: str
    measurements: Measurements
    conditions: tuple[Condition, ...]
    observables: tuple[Observable, ...]
    parameters: tuple[Parameter, ...]
    settings: dict
    texts: dict  # file role -> (path, text): what the result stores

    @property
    def estimated(self) -> tuple[Parameter, ...]:
        return tuple(q for q in self.parameters if q.estimate)

    def parameter(self, pid: str) -> Parameter:
        return next(q for q in self.parameters if q.id == pid)

    def files(self) -> dict:
        return {role: p for role, (p, _) in self.texts.items()}


def noise_placeholder(name: str, oid: str) -> int | None:
    """K of ``noiseParameterK_<oid>`` (K = 1, 2, ...: the name the fit sets), else None."""
    stem, _, rest = name.partition("_")
    digits = stem[len("noiseParameter"):]
    if not (stem.startswith("noiseParameter") and rest == oid and digits.isascii()
            and digits.isdigit() and digits[0] != "0" and len(digits) < 10):
        return None
    return int(digits)


def is_model_path(pid: str) -> bool:
    group, _, key = pid.rpartition(".")
    return (not group and pid in PARAMETER_NAMES) or (group in GROUPS and bool(key))


def _group_keys() -> dict:
    """The keys each value group has (``tmesim.value_paths`` of an organoid's values)."""
    from ._model import CELLS, MOBILE, SOLUTES

    return {"diffusion": MOBILE, "decay": SOLUTES, "medium": SOLUTES,
            "initial": ("radius_um", "csc_fraction") + CELLS}


# --------------------------------------------------------------------------
class _Table:
    """A TSV/CSV table read as rows of {column: text} with line numbers, errors located."""

    def __init__(self, path: str, role: str, required, optional, free: bool = False):
        self.path, self.role = path, role
        text = _read_text(path, role)
        self.text = text
        delimiter = "," if path.lower().endswith(".csv") else "\t"
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            rows = list(reader)
        except csv.Error as err:
            where = _long_cell(text, delimiter, reader.line_num)
            raise ProblemError(f"{path}: row {reader.line_num}{where}: not a valid "
                               f"{'CSV' if delimiter == ',' else 'TSV'} table ({err})") from None
        if not rows or not any(c.strip() for c in rows[0]):
            raise ProblemError(f"{path}: the {role} table is empty: expected a header row with "
                               f"the columns {', '.join(required)}")
        self.header = [c.strip() for c in rows[0]]
        if len(rows[0]) == 1 and delimiter == "\t" and "," in rows[0][0]:
            raise ProblemError(f"{path}: row 1: one column {rows[0][0][:60]!r}: the file reads "
                               f"as comma-separated; name it .csv or separate columns by tabs")
        seen = set()
        for j, c in enumerate(self.header):
            if not c:
                raise ProblemError(f"{path}: row 1, column {j + 1}: empty column name")
            if c in seen:
                raise ProblemError(f"{path}: row 1: column {c!r} appears twice")
            seen.add(c)
        missing = [c for c in required if c not in seen]
        if missing:
            hint = ""
            for m in missing:
                close = difflib.get_close_matches(m, self.header, n=1, cutoff=0.6)
                if close:
                    hint = f" (is {close[0]!r} meant to be {m!r}?)"
            raise ProblemError(f"{path}: row 1: missing column(s) {', '.join(missing)} of the "
                               f"{role} table{hint}; columns are {', '.join(self.header)}")
        if not free:
            known = set(required) | set(optional)
            for c in self.header:
                if c not in known:
                    hint = did_you_mean(c, sorted(known))
                    raise ProblemError(f"{path}: row 1: unknown column {c!r} in the {role} "
                                       f"table{hint}; known: {', '.join(sorted(known))}")
        self.rows = []
        if len(rows) - 1 > MAX_ROWS:
            raise ProblemError(f"{path}: {len(rows) - 1} rows: expected at most {MAX_ROWS}")
        line = 1
        for r in rows[1:]:
            line += 1
            if not any(c.strip() for c in r):
                continue  # blank line
            if len(r) != len(self.header):
                raise ProblemError(f"{path}: row {line}: {len(r)} cells, expected "
                                   f"{len(self.header)} (the header's columns)")
            self.rows.append((line, {c: v.strip() for c, v in zip(self.header, r)}))
        if not self.rows:
            raise ProblemError(f"{path}: the {role} table has a header but no rows")

    def fail(self, line: int, column: str, why: str):
        raise ProblemError(f"{self.path}: row {line}, column {column!r}: {why}")

    def number(self, line, row, column, default=None, finite=True):
        text = row.get(column, "")
        if text == "":
            if default is not None:
                return default
            self.fail(line, column, "expected a number, got an empty cell")
        try:
            v = float(text)
        except ValueError:
            self.fail(line, column, f"expected a number, got {text[:60]!r}")
        if finite and not math.isfinite(v):
            self.fail(line, column, f"expected a finite number, got {text!r}")
        if math.isnan(v):
            self.fail(line, column, "expected a number, got NaN")
        return v

    def identifier(self, line, row, column):
        text = row.get(column, "")
        if not text.isidentifier():
            self.fail(line, column, f"expected an identifier (letters, digits, _; not starting "
                                    f"with a digit), got {text[:60]!r}")
        return text

    def choice(self, line, row, column, choices, default):
        text = row.get(column, "") or default
        if text not in choices:
            hint = did_you_mean(text, choices, 0.5)
            self.fail(line, column,
                      f"expected one of {', '.join(choices)}, got {text[:60]!r}{hint}")
        return text


def _long_cell(text: str, delimiter: str, line: int) -> str:
    """', column NAME' of the first cell of that line past csv's field size limit (the one
    csv stopped at), if any."""
    lines = re.split(r"\r\n|\r|\n", text, maxsplit=line)
    if not 1 < line <= len(lines):
        return ""
    header, cells = lines[0].split(delimiter), lines[line - 1].split(delimiter)
    long = [j for j, c in enumerate(cells) if len(c) > csv.field_size_limit()]
    if not long or long[0] >= len(header):
        return ""
    return f", column {header[long[0]].strip()!r}"


def _read_text(path: str, role: str) -> str:
    _regular_file(path, role)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise ProblemError(f"{path}: cannot read the {role} file ({err.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ProblemError(f"{path}: not a text file: byte 0x{raw[err.start]:02x} at offset "
                           f"{err.start} is not UTF-8") from None


def _regular_file(path: str, role: str) -> None:
    """Refuse what is not a regular file before opening it: reading /dev/zero or a FIFO
    never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ProblemError(f"{path}: cannot read the {role} file ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ProblemError(f"{path}: cannot read the {role} file: {kind}; expected a text file")


# --------------------------------------------------------------------------
def _parameters(t: _Table) -> tuple[Parameter, ...]:
    out, ids = [], {}
    for line, row in t.rows:
        pid = row["parameterId"]
        if not (pid.isidentifier() or (is_model_path(pid) and all(
                p.isidentifier() for p in pid.split(".")))):
            t.fail(line, "parameterId", f"expected an identifier or a model value path such as "
                                        f"diffusion.oxygen, got {pid[:60]!r}")
        if "." in pid and not is_model_path(pid):
            group = pid.split(".")[0]
            t.fail(line, "parameterId", f"{pid!r}: {group!r} is not a value group; expected "
                                        f"one of {', '.join(GROUPS)}")
        if "." in pid:
            group, _, key = pid.rpartition(".")
            keys = _group_keys()[group]
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                hint = f"; did you mean {group}.{close[0]}?" if close else ""
                t.fail(line, "parameterId", f"{pid!r}: no value {key!r} in {group}{hint}; "
                                            f"expected one of {', '.join(keys)}")
        if pid in ids:
            t.fail(line, "parameterId", f"{pid!r} is listed twice (rows {ids[pid]} and {line})")
        ids[pid] = line
        scale = t.choice(line, row, "parameterScale", SCALES, "")
        lo = t.number(line, row, "lowerBound")
        hi = t.number(line, row, "upperBound")
        nominal = t.number(line, row, "nominalValue")
        est = row["estimate"]
        if est not in ("0", "1"):
            t.fail(line, "estimate", f"expected 0 (fixed at nominalValue) or 1 (estimated), "
                                     f"got {est[:20]!r}")
        if not lo < hi:
            t.fail(line, "upperBound", f"expected upperBound > lowerBound ({lo:g}), got {hi:g}")
        if scale in ("log", "log10") and lo <= 0:
            t.fail(line, "lowerBound",
                   f"a {scale}-scaled parameter needs lowerBound > 0, got {lo:g}")
        if scale == "logit" and not (0 <= lo and hi <= 1):
            t.fail(line, "lowerBound" if lo < 0 else "upperBound",
                   f"a logit-scaled parameter is a share: expected bounds within [0, 1], got "
                   f"[{lo:g}, {hi:g}]")
        if not lo <= nominal <= hi:
            t.fail(line, "nominalValue", f"expected a value within the bounds [{lo:g}, {hi:g}], "
                                         f"got {nominal:g}")
        if est == "1" and scale == "logit" and (lo == 0 or hi == 1):
            lo_s, hi_s = max(lo, 1e-9), min(hi, 1 - 1e-9)
            lo, hi = lo_s, hi_s
        prior = _prior(t, line, row, "objectivePrior")
        init = _prior(t, line, row, "initializationPrior")
        out.append(Parameter(pid, scale, lo, hi, nominal, est == "1", prior, init,
                             row.get("parameterName", "") or pid, line))
    return tuple(out)


def _prior(t: _Table, line, row, stem):
    kind = row.get(f"{stem}Type", "")
    text = row.get(f"{stem}Parameters", "")
    if not kind:
        if text:
            t.fail(line, f"{stem}Type", f"{stem}Parameters is given ({text[:40]!r}) but no type; "
                                        f"expected one of {', '.join(PRIORS)}")
        return None
    kind = t.choice(line, row, f"{stem}Type", PRIORS, "")
    parts = text.split(";") if text else []
    if len(parts) != 2:
        t.fail(line, f"{stem}Parameters", f"expected two numbers separated by ';' (e.g. "
                                          f"'0;1': {kind}'s two parameters), got {text[:40]!r}")
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        t.fail(line, f"{stem}Parameters", f"expected two numbers separated by ';', got "
                                          f"{text[:40]!r}")
    if not (math.isfinite(a) and math.isfinite(b)):
        t.fail(line, f"{stem}Parameters", f"expected finite numbers, got {text[:40]!r}")
    if "Uniform" in kind or kind == "uniform":
        if not a < b:
            t.fail(line, f"{stem}Parameters", f"a uniform prior needs lower < upper, got {text!r}")
    elif b <= 0:
        t.fail(line, f"{stem}Parameters", f"{kind}: expected a positive scale (second number), "
                                          f"got {b:g}")
    return kind, (a, b)


def _observables(t: _Table, parameter_ids) -> tuple[Observable, ...]:
    out, ids = [], {}
    for line, row in t.rows:
        oid = t.identifier(line, row, "observableId")
        if oid in ids:
            t.fail(line, "observableId", f"{oid!r} is listed twice (rows {ids[oid]} and {line})")
        ids[oid] = line
        formulas = {}
        for column, default in (("observableFormula", None), ("noiseFormula", "1")):
            text = row.get(column, "") or (default or "")
            try:
                f = parse_formula(text)
            except ValueError as err:
                t.fail(line, column, str(err))
            for name in f.names:
                if name in OBSERVABLES or name in parameter_ids or (
                        column == "noiseFormula" and noise_placeholder(name, oid)):
                    continue
                known = list(OBSERVABLES) + list(parameter_ids)
                hint = did_you_mean(name, known)
                t.fail(line, column, f"unknown name {name[:60]!r} in {text[:60]!r}{hint}: "
                                     f"expected a model observable (tmesim.OBSERVABLES), a "
                                     f"parameterId of the parameter table"
                                     + (f" or noiseParameter1_{oid}" if column == "noiseFormula"
                                        else ""))
            formulas[column] = f
        if not any(n in OBSERVABLES for n in formulas["observableFormula"].names):
            t.fail(line, "observableFormula", f"{formulas['observableFormula'].text!r} reads no "
                                              f"model observable; expected one of "
                                              f"{', '.join(list(OBSERVABLES)[:6])}, ...")
        trans = t.choice(line, row, "observableTransformation", TRANSFORMS, "lin")
        dist = t.choice(line, row, "noiseDistribution", DISTRIBUTIONS, "normal")
        out.append(Observable(oid, formulas["observableFormula"], trans, formulas["noiseFormula"],
                              dist, line))
    return tuple(out)


def _conditions(t: _Table, scenario_path: str, base_overrides) -> tuple[Condition, ...]:
    out, ids = [], {}
    keys = [c for c in t.header if c not in ("conditionId", "conditionName")]
    for line, row in t.rows:
        cid = t.identifier(line, row, "conditionId")
        if cid in ids:
            t.fail(line, "conditionId", f"{cid!r} is listed twice (rows {ids[cid]} and {line})")
        ids[cid] = line
        overrides = []
        for k in keys:
            text = row[k]
            if text == "":
                continue
            path = f"parameters.{k}" if k in PARAMETER_NAMES else k
            overrides.append(f"{path}={text}")
            v = parse_value(text)
            if isinstance(v, str) and path != "cell_line" and not path.endswith(".drug") \
                    and not path.endswith(".field"):
                t.fail(line, k, f"expected a TOML value (a number, true/false, a quoted string, "
                                f"a list), got {text[:60]!r}")
        try:
            load_scenario(scenario_path, tuple(base_overrides) + tuple(overrides))
        except ScenarioError as err:
            t.fail(line, "conditionId", f"condition {cid!r} does not make a valid scenario: {err}")
        out.append(Condition(cid, row.get("conditionName", "") or cid, tuple(overrides), line))
    return tuple(out)


def _measurements(t: _Table, conditions, observables, parameters, time_unit, days: float,
                  conditions_path: str = "condition table"):
    cond_index = {c.id: i for i, c in enumerate(conditions)}
    obs_index = {o.id: i for i, o in enumerate(observables)}
    cond_column = "simulationConditionId" if "simulationConditionId" in t.header else "experimentId"
    for column in ("preequilibrationConditionId", "observableParameters"):
        if column in t.header and any(row[column] for _, row in t.rows):
            line = next(line for line, row in t.rows if row[column])
            t.fail(line, column, "not supported by tmesim (no pre-equilibration; observable "
                                 "formulas take parameter ids directly): leave it empty")
    obs, cond, time, value, noise, rep, ds, rows = [], [], [], [], [], [], [], []
    scale = TIME_UNITS[time_unit]
    for line, row in t.rows:
        oid, cid = row["observableId"], row[cond_column]
        if oid not in obs_index:
            hint = did_you_mean(oid, list(obs_index))
            t.fail(line, "observableId", f"unknown observable {oid[:60]!r}{hint}: expected an "
                                         f"observableId of the observable table")
        if cid not in cond_index:
            hint = did_you_mean(cid, list(cond_index))
            t.fail(line, cond_column, f"unknown condition {cid[:60]!r}{hint}: expected a "
                                      f"conditionId of the condition table")
        tt = t.number(line, row, "time")
        if tt < 0:
            t.fail(line, "time", f"expected a time >= 0 ({time_unit}s), got {tt:g}")
        if tt * scale / 1440.0 > 1000:
            t.fail(line, "time", f"expected at most 1000 days, got {tt:g} {time_unit}s")
        m = t.number(line, row, "measurement")
        o = observables[obs_index[oid]]
        if o.transformation != "lin" and m <= 0:
            t.fail(line, "measurement", f"observable {oid!r} is {o.transformation}-transformed: "
                                        f"expected a positive measurement, got {m:g}")
        parts = []
        text = row.get("noiseParameters", "")
        if text:
            for p in text.split(";"):
                p = p.strip()
                try:
                    v = float(p)
                except ValueError:
                    if p not in parameters:
                        t.fail(line, "noiseParameters", f"{p[:40]!r} is neither a number nor a "
                                                        f"parameterId")
                    parts.append(p)
                    continue
                if not (math.isfinite(v) and v > 0):
                    t.fail(line, "noiseParameters", f"expected positive numbers or "
                                                    f"parameter ids, got {p[:40]!r}")
                parts.append(v)
        needed = [n for n in o.noise.names if noise_placeholder(n, oid)]
        for n in needed:
            k = noise_placeholder(n, oid)
            if k > len(parts):
                t.fail(line, "noiseParameters", f"observable {oid!r}'s noiseFormula reads {n}: "
                                                f"expected at least {k} ';'-separated value(s), "
                                                f"got {text[:40]!r}")
        obs.append(obs_index[oid])
        cond.append(cond_index[cid])
        time.append(tt * scale)
        value.append(m)
        noise.append(tuple(parts))
        rep.append(row.get("replicateId", ""))
        ds.append(row.get("datasetId", ""))
        rows.append(line)
    used = set(cond)
    for i, c in enumerate(conditions):
        if i not in used:
            raise ProblemError(f"{conditions_path}: row {c.row}, column 'conditionId': no "
                               f"measurement of condition {c.id!r} in {t.path}: remove the "
                               f"condition or add its measurements")
    return Measurements(np.array(obs), np.array(cond), np.array(time), np.array(value),
                        tuple(noise), tuple(rep), tuple(ds), np.array(rows))


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:80] + "..."


def _settings(path: str, table) -> dict:
    if not isinstance(table, dict):
        raise ProblemError(f"{path}: [fit] must be a table of settings, got {table!r}")
    out = {}
    for key in table:
        if key not in FIT_SETTINGS:
            hint = did_you_mean(key, list(FIT_SETTINGS))
            raise ProblemError(f"{path}: fit.{key}: unknown setting{hint}; known: "
                               f"{', '.join(FIT_SETTINGS)}")
    for key, s in FIT_SETTINGS.items():
        v = table.get(key, s.default)
        if v is None:
            out[key] = None
            continue
        ok = isinstance(v, bool) if s.kind is bool else (
            isinstance(v, s.kind) and not isinstance(v, bool) or (
                s.kind is float and isinstance(v, int) and not isinstance(v, bool)))
        if s.kind is list and ok and not all(isinstance(x, str) for x in v):
            ok = False
        if not ok:
            raise ProblemError(f"{path}: fit.{key}: expected {s.kind.__name__}"
                               f"{' of strings' if s.kind is list else ''} ({s.help}), "
                               f"got {_short(v)}")
        if s.kind is float:
            try:
                v = float(v)
            except OverflowError:
                raise ProblemError(f"{path}: fit.{key}: expected a float ({s.help}), got an "
                                   f"integer too large for one: {_short(v)}") from None
        why = s.check(v) if s.check else None
        if why:
            raise ProblemError(f"{path}: fit.{key}: {why}, got {_short(v)}")
        out[key] = v
    return out


def load_problem(path, overrides: dict | None = None) -> FitProblem:
    """Read and check a calibration problem (TOML file and its four tables).

    overrides: fit settings replacing the [fit] table's (the command line's
    --starts, --iterations, ...). Raises ProblemError naming file, row and column.
    """
    path = str(path)
    text = _read_text(path, "problem")
    raw = parse_toml(text, path, ProblemError)
    known = {"name", "description", "scenario", "time_unit", "overrides", "fit", *TABLES}
    for key in raw:
        if key not in known:
            hint = did_you_mean(key, sorted(known))
            raise ProblemError(f"{path}: unknown key {key!r}{hint}; known: "
                               f"{', '.join(sorted(known))}")
    for key in ("scenario", *TABLES):
        if not isinstance(raw.get(key), str) or not raw[key] or "\x00" in raw[key]:
            raise ProblemError(f"{path}: {key}: expected the file name of the {key} "
                               f"{'file' if key == 'scenario' else 'table'} (relative to the "
                               f"problem file), got {raw.get(key)!r}")
    base = os.path.dirname(os.path.abspath(path))

    def here(p):
        return p if os.path.isabs(p) else os.path.join(base, p)

    time_unit = raw.get("time_unit", "day")
    if not isinstance(time_unit, str) or time_unit not in TIME_UNITS:
        raise ProblemError(f"{path}: time_unit: expected one of {', '.join(TIME_UNITS)}, got "
                           f"{_short(time_unit)}")
    base_overrides = raw.get("overrides", [])
    if not (isinstance(base_overrides, list) and all(isinstance(o, str) for o in base_overrides)):
        raise ProblemError(f"{path}: overrides: expected a list of 'key=value' scenario "
                           f"overrides, got {base_overrides!r}")
    fit = raw.get("fit", {})
    if not isinstance(fit, dict):
        raise ProblemError(f"{path}: fit: expected a table of settings ([fit]), got {_short(fit)}")
    settings = _settings(path, fit | dict(overrides or {}))
    scenario_path = here(raw["scenario"])
    try:
        _regular_file(scenario_path, "scenario")
        scenario = load_scenario(scenario_path, tuple(base_overrides))
    except (ScenarioError, ProblemError) as err:
        raise ProblemError(f"{path}: scenario: {err}") from None
    tables = {k: here(raw[k]) for k in TABLES}
    for key in TABLES:
        try:
            _regular_file(tables[key], key[:-1])
        except ProblemError as err:
            raise ProblemError(f"{path}: {key}: {err}") from None
    pt = _Table(tables["parameters"], "parameter",
                ("parameterId", "parameterScale", "lowerBound", "upperBound", "nominalValue",
                 "estimate"),
                ("parameterName", "objectivePriorType", "objectivePriorParameters",
                 "initializationPriorType", "initializationPriorParameters"))
    parameters = _parameters(pt)
    ids = {q.id: q for q in parameters}
    ot = _Table(tables["observables"], "observable", ("observableId", "observableFormula"),
                ("observableName", "observableTransformation", "noiseFormula",
                 "noiseDistribution"))
    observables = _observables(ot, ids)
    ct = _Table(tables["conditions"], "condition", ("conditionId",), (), free=True)
    conditions = _conditions(ct, scenario_path, base_overrides)
    mt = _Table(tables["measurements"], "measurement",
                ("observableId", "time", "measurement"),
                ("simulationConditionId", "experimentId", "noiseParameters", "replicateId",
                 "datasetId", "preequilibrationConditionId", "observableParameters"))
    if "simulationConditionId" not in mt.header and "experimentId" not in mt.header:
        raise ProblemError(f"{mt.path}: row 1: missing column simulationConditionId (or "
                           f"experimentId) of the measurement table")
    measurements = _measurements(mt, conditions, observables, ids, time_unit,
                                 scenario.data["run"]["days"], ct.path)
    # every free parameter must be read somewhere; model paths conflict with condition columns
    read = set()
    for o in observables:
        read |= set(o.formula.names) | set(o.noise.names)
    for parts in measurements.noise:
        read |= {p for p in parts if isinstance(p, str)}
    for q in parameters:
        if not q.model and q.id not in read:
            pt.fail(q.row, "parameterId", f"{q.id!r} is neither a model value (a parameter "
                                          f"name, or diffusion./decay./medium./initial. path) "
                                          f"nor read by an observable or noise formula")
    for c in conditions:
        for item in c.overrides:
            key = item.split("=", 1)[0]
            key = key[len("parameters."):] if key.startswith("parameters.") else key
            if key in ids:
                ct.fail(c.row, key, f"{key!r} is also in the parameter table (row "
                                    f"{ids[key].row}): set it in one place")
    for pid in settings["profiles"] or ():
        if pid not in ids or not ids[pid].estimate:
            raise ProblemError(f"{path}: fit.profiles: {pid!r} is not an estimated parameter; "
                               f"estimated: {', '.join(q.id for q in parameters if q.estimate)}")
    texts = {"problem": (path, text), "scenario": (scenario_path, scenario.text)}
    if scenario.parameters_file is not None:
        texts["parameters_file"] = scenario.parameters_file
    for role, t in (("parameters", pt), ("observables", ot), ("conditions", ct),
                    ("measurements", mt)):
        texts[role] = (t.path, t.text)
    return FitProblem(path, str(raw.get("name", os.path.basename(path))), scenario_path, scenario,
                      tuple(base_overrides), time_unit, measurements, conditions, observables,
                      parameters, settings,
                      texts)
