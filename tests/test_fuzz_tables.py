"""Property-based fuzzing of calibration problems: ``tmesim._petab.load_problem``.

A valid problem (tests/test_fit.py's ``write_problem``: a problem file, a scenario and
four tables; in three variants: the default one, a richer one with every optional
column, and the richer one as CSV) is damaged three ways:

1. one file (a table, the problem file or the scenario) is replaced by arbitrary
   bytes or text: random bytes and text, non-UTF-8, NUL bytes, BOMs, CSV quoting,
   extra or missing separators, rows of edge tokens, the valid text cut, spliced,
   with lines dropped or duplicated;
2. cells of a valid table are replaced one by one by arbitrary strings: numbers in
   every spelling, identifiers (unicode too), formulas with forbidden syntax
   (``__import__("os")``, lambda, attributes, subscripts, comparisons), formulas that
   overflow at evaluation, nesting deep enough to exhaust ``ast.parse``, TOML values;
3. the problem file's keys and its ``[fit]`` settings are set to arbitrary TOML values
   (wrong types, negative, huge, NaN, lists, nested tables, deep nesting) or to file
   names that are not files (a folder, /dev/zero, a NUL byte, a name too long).

Property: ``load_problem`` returns a FitProblem or raises ProblemError whose message
names the damaged file (or, for a cross-reference, the file where the reference
fails, at its row and column); a damaged table cell is reported with its row and
column; nothing else is raised, no case runs past ``CASE_SECONDS`` (SIGALRM), and no
file appears in the problem's folder. Derandomized. Default run: 3 x 1000 cases;
``-m slow``: 3 x 10000.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from test_fit import placeholder_measurements, write_problem
from test_fuzz import VALUES, time_limit, toml_string, toml_value

from tmesim._petab import FIT_SETTINGS, TABLES, FitProblem, ProblemError, load_problem

CASE_SECONDS = 20.0  # a case takes milliseconds
DEFAULT_EXAMPLES = 1000
SLOW_EXAMPLES = 10000
NAMES = {"problem": "problem.toml", "scenario": "scenario.toml",
         **{t: f"{t}.tsv" for t in TABLES}}

# --------------------------------------------------------------------------
# the valid problems
RICH = {
    "parameters": (
        "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\t"
        "parameterName\tobjectivePriorType\tobjectivePriorParameters\t"
        "initializationPriorType\tinitializationPriorParameters\n"
        "tumor_division_rate\tlog\t0.0002\t0.004\t0.00072\t1\tdivision\tlogNormal\t-7;0.5"
        "\tuniform\t0.0003;0.003\n"
        "o2_uptake\tlog10\t300\t1500\t1000\t1\t\t\t\t\t\n"
        "sigma_n\tlin\t0.1\t10\t1\t0\tnecrotic noise\tnormal\t1;2\t\t\n"
        "scale\tlogit\t0\t1\t0.5\t1\t\t\t\tparameterScaleUniform\t-2;2\n"),
    "observables": (
        "observableId\tobservableName\tobservableFormula\tobservableTransformation\t"
        "noiseFormula\tnoiseDistribution\n"
        "outer\touter radius\ttumor_radius\tlin\tnoiseParameter1_outer * tumor_radius\tnormal\n"
        "necrotic\t\tscale * necrotic_radius + exp(-1)\tlog\tsigma_n\tlaplace\n"),
    "conditions": "conditionId\tconditionName\tgeometry.radius_um\nball\tBall\t300\nsmall\t\t250\n",
    "measurements": (
        "observableId\tsimulationConditionId\ttime\tmeasurement\tnoiseParameters\t"
        "replicateId\tdatasetId\n"
        "outer\tball\t0.5\t300\t0.05\tr1\td\n"
        "necrotic\tball\t1\t50\t\tr1\td\n"
        "outer\tsmall\t1\t250\t0.1\t\t\n"
        "necrotic\tsmall\t2\t40\t\tr2\t\n"),
}


def _variants():
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for variant, tables in (("default", {}), ("rich", RICH)):
            folder = os.path.join(d, variant)
            write_problem(folder, tables.get("measurements", placeholder_measurements()),
                          **{k: v for k, v in tables.items() if k != "measurements"})
            out[variant] = {}
            for name in NAMES.values():
                with open(os.path.join(folder, name), encoding="utf-8") as fh:
                    out[variant][name] = fh.read()
    csv = {}  # the rich problem with comma-separated tables
    for name, text in out["rich"].items():
        if name.endswith(".tsv"):
            csv[name[:-4] + ".csv"] = text.replace("\t", ",")
        elif name == "problem.toml":
            csv[name] = text.replace(".tsv", ".csv")
        else:
            csv[name] = text
    out["csv"] = csv
    return out


VARIANTS = _variants()


def table_name(variant: str, role: str) -> str:
    name = NAMES[role]
    return name[:-4] + ".csv" if variant == "csv" and name.endswith(".tsv") else name


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("problem").resolve())


def write_variant(folder: str, variant: str, replace: dict | None = None) -> str:
    """Write the problem's files into ``folder`` (emptied first), ``replace``: name -> bytes."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    for name, text in VARIANTS[variant].items():
        data = (replace or {}).get(name, text.encode("utf-8"))
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
    return os.path.join(folder, "problem.toml")


def _listing(folder):
    return sorted((name, os.path.getsize(os.path.join(folder, name)))
                  for name in os.listdir(folder))


def check(folder: str, problem: str, changed: set, cell: bool = False) -> str:
    """Load; on ProblemError, the message must name a changed file (or a cross-reference:
    another file of the problem, at a row and column); ``cell``: with a row and column."""
    before = _listing(folder)
    try:
        with time_limit(CASE_SECONDS):
            fp = load_problem(problem)
    except ProblemError as err:
        msg = str(err)
        ours = [os.path.join(folder, n) for n in os.listdir(folder)]
        located = "row " in msg and "column '" in msg
        assert any(p in msg for p in changed) or (any(p in msg for p in ours) and located), msg
        if cell:
            assert located, msg
        outcome = "refused"
    else:
        assert isinstance(fp, FitProblem)
        outcome = "loaded"
    assert _listing(folder) == before, "loading wrote a file"
    event(outcome)
    return outcome


def fuzz_settings(n):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------
# 1. a file replaced by arbitrary bytes or text
EDGE_NUMBERS = ["0", "-0", "+0", "-0.0", "1", "-1", "0.5", ".5", "5.", "1e999", "-1e999",
                "1e-400", "1e308", "1.8e308", "nan", "NaN", "-nan", "inf", "-inf", "Infinity",
                "INF", "1_000", "0x10", "0b1", "0o7", "1,5", "½", "١٢٣", "１２", "1e", "e5",
                "--1", "1e+", "9" * 400, "1" + "0" * 5000, "0." + "0" * 400 + "1", "2**63",
                "1j", "True", "None"]
NAMES_OF_THINGS = ["tumor_radius", "necrotic_radius", "tumor_division_rate", "o2_uptake",
                   "sigma_n", "scale", "outer", "necrotic", "ball", "small", "lin", "log",
                   "log10", "logit", "normal", "laplace", "uniform", "logNormal",
                   "parameterScaleUniform", "diffusion.oxygen", "initial.radius_um",
                   "decay.oxygen", "geometry.radius_um", "noiseParameter1_outer",
                   "noiseParameter2_outer", "noiseParameter0_outer", "noiseParameter01_outer",
                   "noiseParameter1_necrotic", "noiseParameter፩_outer", "noiseParameter_sd",
                   "exp", "sqrt", "lambda", "None", "ﬁ", "été", "µ", "x" * 300]
HEADERS = ["parameterId", "parameterScale", "lowerBound", "upperBound", "nominalValue",
           "estimate", "parameterName", "objectivePriorType", "objectivePriorParameters",
           "observableId", "observableFormula", "observableTransformation", "noiseFormula",
           "noiseDistribution", "conditionId", "conditionName", "simulationConditionId",
           "experimentId", "time", "measurement", "noiseParameters", "replicateId",
           "datasetId", "preequilibrationConditionId", "observableParameters",
           "geometry.radius_um", "tumor_division_rate", "run.days", "grid.n", "cell_line"]
STRUCTURE = ["", " ", "\t", ",", ";", '"', '""', '"a\tb"', '"a\nb"', '"unterminated',
             "\ufeff", "\x00", "\r", "\x0b", "\x85", "\u2028", "\\", "'", "#", "=", "[fit]"]
TOKENS = st.one_of(st.sampled_from(EDGE_NUMBERS), st.sampled_from(NAMES_OF_THINGS),
                   st.sampled_from(HEADERS), st.sampled_from(STRUCTURE), st.text(max_size=6))


@st.composite
def tabular(draw, header):
    """Rows of edge tokens, often under the table's own valid header."""
    sep = draw(st.sampled_from(["\t", "\t", ",", ";", " "]))
    end = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    rows = draw(st.lists(st.lists(TOKENS, min_size=0, max_size=8), max_size=5))
    lines = [sep.join(r) for r in rows]
    if draw(st.booleans()):
        lines.insert(0, header)
    text = end.join(lines) + draw(st.sampled_from([end, ""]))
    return draw(st.sampled_from(["", "", "\ufeff", "\ufeff\ufeff"])) + text


@st.composite
def spliced(draw, text):
    """The valid text with a few edits: cut, chars removed or inserted, lines dropped,
    duplicated or swapped."""
    for _ in range(draw(st.integers(1, 3))):
        lines = text.splitlines(keepends=True) or [""]
        kind = draw(st.sampled_from(["cut", "remove", "insert", "drop", "dup", "swap"]))
        i = draw(st.integers(0, len(text)))
        k = draw(st.integers(0, len(lines) - 1))
        if kind == "cut":
            text = text[:i]
        elif kind == "remove":
            text = text[:i] + text[i + draw(st.integers(1, 5)):]
        elif kind == "insert":
            text = text[:i] + draw(TOKENS) + text[i:]
        elif kind == "drop":
            text = "".join(lines[:k] + lines[k + 1:])
        elif kind == "dup":
            text = "".join(lines[:k + 1] + lines[k:])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
            text = "".join(lines)
    return text


@st.composite
def replaced_file(draw):
    variant = draw(st.sampled_from(sorted(VARIANTS)))
    role = draw(st.sampled_from(sorted(NAMES)))
    name = table_name(variant, role)
    valid = VARIANTS[variant][name]
    kind = draw(st.sampled_from(["bytes", "text", "tabular", "spliced", "spliced", "encoded"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
    elif kind == "text":
        data = draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    elif kind == "tabular":
        data = draw(tabular(valid.splitlines()[0])).encode("utf-8", "surrogatepass")
    elif kind == "spliced":
        data = draw(spliced(valid)).encode("utf-8", "surrogatepass")
    else:  # the valid text in another encoding, or with a stray byte
        enc = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252", "utf-8-sig"]))
        data = (valid + draw(st.sampled_from(["", "é", "€"]))).encode(enc, "replace")
        if draw(st.booleans()):
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.binary(min_size=1, max_size=3)) + data[i:]
    return variant, name, data


def _check_replaced(folder, case):
    variant, name, data = case
    problem = write_variant(folder, variant, {name: data})
    changed = {os.path.join(folder, name)}
    if name == "scenario.toml":  # "<problem>: scenario: <scenario>: ..."
        changed.add(problem)
    check(folder, problem, changed)


REPLACED = [  # regressions: what load_problem did before
    ("default", "problem.toml", b"a = " + b"[" * 3000 + b"]" * 3000),  # RecursionError
    ("default", "problem.toml", b"a = 1" + b"0" * 5000),  # ValueError: int digits limit
    ("rich", "scenario.toml", b"[run]\ndays = 1" + b"0" * 5000),  # ValueError: int digits
    # a table name misspelt: the message named the missing table, not the problem file
    ("csv", "problem.toml", VARIANTS["csv"]["problem.toml"].replace(
        "measurements.csv", "measunts.csv").encode()),
]


@fuzz_settings(DEFAULT_EXAMPLES)
@given(case=replaced_file())
@example(case=REPLACED[0])
@example(case=REPLACED[1])
@example(case=REPLACED[2])
@example(case=REPLACED[3])
def test_fuzz_replaced_file(folder, case):
    _check_replaced(folder, case)


@pytest.mark.slow
@fuzz_settings(SLOW_EXAMPLES)
@given(case=replaced_file())
def test_fuzz_replaced_file_long(folder, case):
    _check_replaced(folder, case)


# --------------------------------------------------------------------------
# 2. cells of a valid table replaced one by one
def _deep(n, kind):
    return {"parens": "(" * n + "tumor_radius" + ")" * n,
            "minus": "-" * n + "tumor_radius",
            "not": "not " * n + "tumor_radius",
            "sum": "+".join(["tumor_radius"] * n),
            "power": "**".join(["1"] * n) + "*tumor_radius",
            "calls": "exp(" * n + "tumor_radius" + ")" * n,
            "attribute": "tumor_radius" + ".a" * n,
            "subscript": "tumor_radius" + "[0]" * n,
            "lambda": "lambda: " * n + "tumor_radius",
            "list": "[" * n + "1" + "]" * n,
            "table": "{a = " * n + "1" + "}" * n}[kind]


DEEP = st.builds(_deep, st.sampled_from([10, 99, 100, 101, 199, 200, 201, 500, 999, 1000,
                                         2000, 3000, 10000, 30000]),
                 st.sampled_from(["parens", "minus", "not", "sum", "power", "calls",
                                  "attribute", "subscript", "lambda", "list", "table"]))
FORMULA_EDGES = [
    "tumor_radius ** 1e308", "exp(exp(1000))", "tumor_radius * 10 ** 400", "1e999 * tumor_radius",
    "log(0) + tumor_radius", "sqrt(-1) * tumor_radius", "tumor_radius / 0",
    '__import__("os").system("true")', "lambda x: tumor_radius", "tumor_radius.real",
    "tumor_radius[0]", "tumor_radius if 1 else 2", "tumor_radius < 1", "tumor_radius and 1",
    "tumor_radius @ 2", "tumor_radius // 2", "tumor_radius % 2", "~tumor_radius",
    "not tumor_radius", "exp(tumor_radius, 2)", "exp()", "exp(x=tumor_radius)",
    "exp(*tumor_radius)", "sin(tumor_radius)", "exp", "exp(exp)", "log(tumor_radius) * log",
    "(x := tumor_radius)", "f'{tumor_radius}'", "'tumor_radius'", "b'1'", "...", "1j",
    "True * tumor_radius", "None", "[tumor_radius]", "{tumor_radius}", "tumor_radius,",
    "(tumor_radius for _ in ())", "await tumor_radius", "yield", "tumor_radius; 1",
    "tumor_radius # comment", "\\", "tumor_radius\x00", "ｔｕｍｏｒ_radius", "tumor_radius²",
    "noiseParameter1_outer", "noiseParameter2_outer * tumor_radius", "noiseParameter0_outer",
    "noiseParameter01_outer", "noiseParameter፩_outer", "noiseParameter1_necrotic",
    "noiseParameter" + "1" * 5000 + "_outer", "noiseParameter99999999999999999999_outer",
    "noiseParameter1_outer" * 2, "sigma_n * noiseParameter1_outer", "scale", "1" * 5000,
    "0x1p3", "1_0 * tumor_radius", "tumor_radius +", "tumor_radius)", "(tumor_radius",
]


@st.composite
def formulas(draw):
    """Random expressions of names, numbers, operators, calls, with some forbidden syntax."""
    leaf = st.one_of(st.sampled_from(NAMES_OF_THINGS + ["tumor_radius"] * 4),
                     st.sampled_from(EDGE_NUMBERS[:20]), st.integers(-10**30, 10**30).map(str),
                     st.floats().map(repr))
    expr = st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner,
                  st.sampled_from(["+", "-", "*", "/", "**", "//", "%", "@", "<", "and"]), inner),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(
            ["exp", "log", "log10", "sqrt", "sin", "abs", "__import__", "tumor_radius"]), inner),
        st.builds(lambda op, a: f"{op}{a}", st.sampled_from(["-", "+", "~", "not "]), inner),
        st.builds(lambda a: f"({a})", inner),
        st.builds(lambda a, attr: f"{a}.{attr}", inner, st.sampled_from(["real", "__class__"])),
        st.builds(lambda a, i: f"{a}[{i}]", inner, inner),
    ), max_leaves=8)
    return draw(expr)


UNICODE_IDENTIFIERS = st.text(st.characters(categories=["L", "Nl", "Nd", "Mn", "Pc", "No"]),
                              min_size=1, max_size=10)
CELLS = st.one_of(
    st.sampled_from(EDGE_NUMBERS), st.sampled_from(NAMES_OF_THINGS), st.sampled_from(HEADERS),
    st.sampled_from(FORMULA_EDGES), formulas(), DEEP, UNICODE_IDENTIFIERS,
    st.floats().map(lambda v: f"{v!r}"), st.floats().map(lambda v: f"{v:.3e}"),
    st.integers(-10**40, 10**40).map(str),
    st.recursive(st.sampled_from(["1", "-1", "1e999", "nan", "'x'", '"x"', "true", "[]", "{}",
                                  "1979-05-27", "'ball'"]),
                 lambda inner: st.lists(inner, max_size=3).map(lambda v: "[" + ", ".join(v)
                                                               + "]"), max_leaves=5),
    st.lists(st.sampled_from(EDGE_NUMBERS[:20] + ["sigma_n", "scale", "", " "]),
             max_size=4).map(";".join),
    st.text(max_size=20),
)


@st.composite
def mutated_cells(draw):
    variant = draw(st.sampled_from(sorted(VARIANTS)))
    role = draw(st.sampled_from(list(TABLES)))
    name = table_name(variant, role)
    sep = "," if name.endswith(".csv") else "\t"
    rows = [line.split(sep) for line in VARIANTS[variant][name].splitlines()]
    header = draw(st.integers(0, 5)) == 0  # mostly data cells
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        i = 0 if header else draw(st.integers(1, len(rows) - 1))
        j = draw(st.integers(0, len(rows[i]) - 1))
        value = draw(CELLS)
        # a cell cannot hold the separators, line ends, or an opening quote of the format
        value = value.translate({9: " ", 10: " ", 13: " ", 34: "'", 0: " "}
                                | ({44: ";"} if sep == "," else {}))
        rows[i][j] = value
        changes.append((i, j, value))
    if any(not "".join(rows[i]).strip() for i, _, _ in changes):
        header = True  # a row of empty cells: a blank line (skipped), not a cell to name
    text = "\n".join(sep.join(r) for r in rows) + "\n"
    return variant, name, header, changes, text


def _check_cells(folder, case):
    variant, name, header, _, text = case
    problem = write_variant(folder, variant, {name: text.encode("utf-8")})
    check(folder, problem, {os.path.join(folder, name)}, cell=not header)


def _cell(variant, role, *changes):
    """A case of cells (row, column name, value) of a valid table set to values."""
    name = table_name(variant, role)
    sep = "," if name.endswith(".csv") else "\t"
    rows = [line.split(sep) for line in VARIANTS[variant][name].splitlines()]
    for row, column, value in changes:
        rows[row][rows[0].index(column)] = value
    return variant, name, False, list(changes), "\n".join(sep.join(r) for r in rows) + "\n"


CELL_REGRESSIONS = [  # regressions: what load_problem did before
    # RecursionError, MemoryError in ast.parse
    _cell("rich", "observables", (2, "observableFormula", "-" * 3000 + "tumor_radius")),
    _cell("rich", "observables", (2, "observableFormula", "**".join(["1"] * 3000))),
    # ValueError: int('፩') of an Ethiopic digit (str.isdigit, not int), int() of 5000 digits
    _cell("rich", "observables", (1, "noiseFormula", "noiseParameter፩_outer")),
    _cell("rich", "observables", (1, "noiseFormula", "noiseParameter" + "1" * 5000 + "_outer")),
    # ValueError: int digits limit, in tomllib (the scenario's parse_value)
    _cell("rich", "conditions", (1, "geometry.radius_um", "3" + "0" * 5000)),
    # condition 'small' left without measurements: no row and column named
    _cell("rich", "measurements", (3, "simulationConditionId", "ball"),
          (4, "simulationConditionId", "ball")),
    # a cell past csv's field size limit (131072 characters): no column named
    _cell("default", "observables", (1, "noiseFormula", "{a = " * 30000)),
    _cell("csv", "measurements", (1, "observableId", "x" * 131073),
          (1, "simulationConditionId", "x" * 131073)),
]


@fuzz_settings(DEFAULT_EXAMPLES)
@given(case=mutated_cells())
@example(case=CELL_REGRESSIONS[0])
@example(case=CELL_REGRESSIONS[1])
@example(case=CELL_REGRESSIONS[2])
@example(case=CELL_REGRESSIONS[3])
@example(case=CELL_REGRESSIONS[4])
@example(case=CELL_REGRESSIONS[5])
@example(case=CELL_REGRESSIONS[6])
@example(case=CELL_REGRESSIONS[7])
def test_fuzz_table_cells(folder, case):
    _check_cells(folder, case)


@pytest.mark.slow
@fuzz_settings(SLOW_EXAMPLES)
@given(case=mutated_cells())
def test_fuzz_table_cells_long(folder, case):
    _check_cells(folder, case)


# --------------------------------------------------------------------------
# 3. the problem file's keys and [fit] settings set to arbitrary TOML values
class Raw(str):
    """TOML text written as it is (values tomllib reads but Python cannot write back)."""


RAW = st.sampled_from([Raw(s) for s in [
    "1" + "0" * 5000, "-1" + "0" * 400, "9223372036854775808", "-9223372036854775809",
    "0x7fffffffffffffff", "0b101", "0o777", "1e999", "-1e999", "nan", "-nan", "+inf",
    "1979-05-27", "1979-05-27T07:32:00Z", "07:32:00", "'''multi\nline'''", '"\\u0000"',
    "[" * 3000 + "]" * 3000, "{a = " * 500 + "1" + "}" * 500, "[" * 200 + "]" * 200,
    "[1, 'a', [2.5], {b = true}]", "{}", "[]", '""']])
FILE_NAMES = st.sampled_from([
    "", ".", "..", "/", "/dev/null", "/dev/zero", "/proc/self/status", "missing.tsv",
    "a\x00b", "x" * 300, "sub/dir/x.tsv", "problem.toml", "scenario.toml", "parameters.tsv",
    "observables.tsv", "conditions.tsv", "measurements.tsv", "parameters.csv", " ",
    "measurements.tsv\n", "ﬁ.tsv"])
SETTING_VALUES = st.one_of(
    VALUES, RAW, st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**63, -2**63, 10**30]),
    st.lists(st.sampled_from(["tumor_division_rate", "o2_uptake", "sigma_n", "scale", "x", ""]),
             max_size=3),
    st.sampled_from(["lbfgs", "adam", "lhs", "prior", "float32", "float64", "LBFGS", ""]),
)
TOP_KEYS = ["name", "description", "scenario", *TABLES, "time_unit", "overrides", "fit"]
TOP_VALUES = st.one_of(
    FILE_NAMES, SETTING_VALUES, st.sampled_from(["day", "hour", "min", "s", "days"]),
    st.lists(st.sampled_from(["run.days=1", "run.days=x", "grid.n=4", "=", "nope", "a.b=1",
                              "geometry.radius_um=" + "1" * 5000, "run.days=[[[1]]]"]),
             max_size=3),
    st.dictionaries(st.sampled_from(list(FIT_SETTINGS) + ["x"]), SETTING_VALUES, max_size=3))


def toml(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml(x)}" for k, x in v.items()) + "}"
    return toml_value(v)


@st.composite
def mutated_problem(draw):
    variant = draw(st.sampled_from(sorted(VARIANTS)))
    doc = {"name": "synthetic", "scenario": "scenario.toml",
           **{t: table_name(variant, t) for t in TABLES}, "fit": {}}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["fit", "fit", "fit", "top", "delete", "extra"]))
        if kind == "fit" and isinstance(doc.get("fit"), dict):
            key = draw(st.sampled_from(list(FIT_SETTINGS)) | st.text(min_size=1, max_size=8))
            doc["fit"][key] = draw(SETTING_VALUES)
        elif kind == "top":
            doc[draw(st.sampled_from(TOP_KEYS))] = draw(TOP_VALUES)
        elif kind == "delete":
            doc.pop(draw(st.sampled_from(TOP_KEYS)), None)
        else:
            doc[draw(st.text(min_size=1, max_size=8))] = draw(SETTING_VALUES)
    if draw(st.booleans()) and isinstance(doc.get("fit"), dict):  # [fit] as a table section
        fit = doc.pop("fit")
        text = "".join(f"{toml_string(k)} = {toml(v)}\n" for k, v in doc.items())
        text += "[fit]\n" + "".join(f"{toml_string(k)} = {toml(v)}\n" for k, v in fit.items())
    else:
        text = "".join(f"{toml_string(k)} = {toml(v)}\n" for k, v in doc.items())
    return variant, doc, text


def _check_problem(folder, case):
    variant, doc, text = case
    problem = write_variant(folder, variant, {"problem.toml": text.encode("utf-8")})
    # the problem file, or a file it names (the error may be in that file)
    changed = {problem} | {os.path.join(folder, v) for v in doc.values()
                           if isinstance(v, str) and v and "\x00" not in v}
    check(folder, problem, changed)


def _problem(variant, fit=None, **top):
    doc = {"name": "synthetic", "scenario": "scenario.toml",
           **{t: table_name(variant, t) for t in TABLES}, **top}
    text = "".join(f"{toml_string(k)} = {toml(v)}\n" for k, v in doc.items())
    if fit is not None:
        text += f"fit = {toml(fit)}\n"
    return variant, doc, text


PROBLEM_REGRESSIONS = [  # each raised something other than ProblemError before (or hung)
    _problem("rich", fit=3),  # TypeError: dict(3)
    _problem("rich", fit="ab"),  # ValueError: dict("ab")
    _problem("rich", fit=[[1, 2]]),  # TypeError in difflib (a key 1)
    _problem("rich", fit={"profiles": [[1]]}),  # TypeError: unhashable list
    _problem("rich", fit={"learning_rate": Raw("1" + "0" * 400)}),  # OverflowError
    _problem("rich", time_unit=[]),  # TypeError: unhashable list
    _problem("rich", scenario="a\x00b"),  # ValueError: embedded null byte
    _problem("rich", measurements="a\x00b"),  # ValueError: embedded null byte
    _problem("rich", measurements="/dev/zero"),  # read forever
    _problem("rich", scenario="/dev/zero"),  # read forever
]


@fuzz_settings(DEFAULT_EXAMPLES)
@given(case=mutated_problem())
@example(case=PROBLEM_REGRESSIONS[0])
@example(case=PROBLEM_REGRESSIONS[1])
@example(case=PROBLEM_REGRESSIONS[2])
@example(case=PROBLEM_REGRESSIONS[3])
@example(case=PROBLEM_REGRESSIONS[4])
@example(case=PROBLEM_REGRESSIONS[5])
@example(case=PROBLEM_REGRESSIONS[6])
@example(case=PROBLEM_REGRESSIONS[7])
@example(case=PROBLEM_REGRESSIONS[8])
@example(case=PROBLEM_REGRESSIONS[9])
def test_fuzz_problem_settings(folder, case):
    _check_problem(folder, case)


@pytest.mark.slow
@fuzz_settings(SLOW_EXAMPLES)
@given(case=mutated_problem())
def test_fuzz_problem_settings_long(folder, case):
    _check_problem(folder, case)


# --------------------------------------------------------------------------
def test_valid_variants_load(folder):
    """The fuzzed problems start valid: each variant loads."""
    for variant in VARIANTS:
        fp = load_problem(write_variant(folder, variant))
        assert fp.estimated


def test_noise_parameter_named_like_a_placeholder(folder):
    """A parameter id starting with noiseParameter read by a noise formula (no placeholder):
    int('') raised ValueError."""
    rich = VARIANTS["rich"]
    params = rich["parameters.tsv"].replace("sigma_n", "noiseParameter_sd")
    obs = rich["observables.tsv"].replace("sigma_n", "noiseParameter_sd")
    problem = write_variant(folder, "rich", {"parameters.tsv": params.encode(),
                                             "observables.tsv": obs.encode()})
    fp = load_problem(problem)
    assert "noiseParameter_sd" in fp.observables[1].noise.names


def test_function_name_read_as_a_value(folder):
    """``log(tumor_radius) * log`` reads a name ``log`` that is no value: refused at load
    (it was accepted, and failed with KeyError when the fit evaluated it)."""
    case = _cell("rich", "observables", (1, "observableFormula", "log(tumor_radius) * log"))
    problem = write_variant(folder, "rich", {case[1]: case[4].encode()})
    with pytest.raises(ProblemError, match=r"row 2, column 'observableFormula'.*'log'"):
        load_problem(problem)


@pytest.mark.parametrize("value", ["inf", "-1", "0", "nan"])
def test_noise_parameter_not_positive(folder, value):
    """A number that is not positive: said so (it was '... is neither a number nor a
    parameterId', the ProblemError of the number check caught as float()'s ValueError)."""
    case = _cell("rich", "measurements", (1, "noiseParameters", value))
    problem = write_variant(folder, "rich", {case[1]: case[4].encode()})
    with pytest.raises(ProblemError, match=r"row 2, column 'noiseParameters': expected "
                                           r"positive numbers"):
        load_problem(problem)


def test_formula_nesting_limited(folder):
    """A formula nested deeper than MAX_DEPTH parses, but its evaluation (one Python call
    per level, under JAX tracing) would exhaust the stack: refused at load."""
    case = _cell("rich", "observables",
                 (1, "observableFormula", "+".join(["tumor_radius"] * 1500)))
    problem = write_variant(folder, "rich", {case[1]: case[4].encode()})
    with pytest.raises(ProblemError, match=r"row 2, column 'observableFormula'.*nested"):
        load_problem(problem)
