"""Write the measurement tables of the calibration problems from the data in docs/data.

    python scenarios/calibration/make_tables.py

Each problem folder holds a problem file, a scenario, and PEtab-style tables
(docs/calibration.md). The measurement tables are made here from the published
data files (docs/data/README.md gives their sources and licences) and committed;
the other tables are written by hand.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "docs", "data")
# Browning 2021: simulations start at the first day with confocal sections
# (WM983b day 3, WM793b day 4); earlier IncuCyte rows precede spheroid formation.
BROWNING_START = {"WM983b": 3.0, "WM793b": 4.0}
HELD_OUT = (100, 1000)  # Matthews' doses predicted by fits to the other three
HEADER = ["observableId", "simulationConditionId", "time", "measurement", "replicateId",
          "datasetId"]


def _rows(name):
    with open(os.path.join(DATA, name), newline="") as fh:
        return list(csv.DictReader(fh))


def _write(folder, rows, name="measurements.tsv"):
    path = os.path.join(HERE, folder, name)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)
    print(f"wrote {path}: {len(rows)} measurements")


def browning(line: str) -> None:
    t0 = BROWNING_START[line]
    rows = []
    counts = defaultdict(int)
    for r in _rows("browning2021_incucyte_outer_radius.csv"):
        if r["cell_line"] != line or float(r["time_day"]) < t0 or not r["outer_radius_um"]:
            continue  # before the spheroid formed, or an image without a measurement
        t = float(r["time_day"])
        counts[t] += 1
        rows.append(["outer", "seeded_5000", f"{t - t0:g}", r["outer_radius_um"],
                     f"incucyte_{counts[t]}", "incucyte"])
    counts.clear()
    for r in _rows("browning2021_confocal_structure.csv"):
        if r["cell_line"] != line or float(r["time_day"]) < t0:
            continue
        t = float(r["time_day"])
        counts[t] += 1
        rep = f"section_{counts[t]}"
        for oid, col in (("outer_confocal", "outer_radius_um"), ("arrested", "inhibited_radius_um"),
                         ("necrotic", "necrotic_radius_um")):
            if not r[col]:
                continue  # a section without this measurement
            rows.append([oid, "seeded_5000", f"{t - t0:g}", r[col], rep, "confocal"])
    _write(f"browning2021_{line.lower()}", rows)


def freyer() -> None:
    rows = []
    for r in _rows("freyer_sutherland1986_emt6ro_spheroid_growth.csv"):
        t = float(r["time_day"]) - 4.2371  # the simulation starts at the first measurement
        rows.append(["diameter", "emt6ro", f"{t:.4f}", r["diameter_um"], "1", "freyer1986"])
        rows.append(["cells", "emt6ro", f"{t:.4f}", r["cell_number"], "1", "freyer1986"])
    _write("freyer_sutherland1986_emt6ro", rows)


def matthews() -> None:
    """Area and propidium-iodide signal of each well as fold change from its t = 0 image."""
    by_well = defaultdict(list)
    for r in _rows("matthews2022_pdac_organoid_gemcitabine_per_well.csv"):
        by_well[(r["gemcitabine_nM"], r["well_replicate"])].append(r)
    rows = []
    for (dose, well), items in sorted(by_well.items(), key=lambda kv: (float(kv[0][0]),
                                                                         int(kv[0][1]))):
        items.sort(key=lambda r: float(r["time_h"]))
        a0 = float(items[0]["total_organoid_area_px"])
        p0 = float(items[0]["pi_fluorescence_in_organoids_au"])
        cond = f"gemcitabine_{dose}nM"
        for r in items:
            t = float(r["time_h"])
            if t == 0:
                continue  # the fold change is 1 there by construction
            rows.append(["area_fold", cond, f"{t:g}",
                         f"{float(r['total_organoid_area_px']) / a0:.6g}", f"well_{well}",
                         "matthews2022"])
            rows.append(["pi_fold", cond, f"{t:g}",
                         f"{float(r['pi_fluorescence_in_organoids_au']) / p0:.6g}",
                         f"well_{well}", "matthews2022"])
    _write("matthews2022_gemcitabine", rows)
    # a dose held out: the fit of the other doses, and the rows its prediction is scored on
    for dose in HELD_OUT:
        held, cond = f"matthews2022_gemcitabine/held_out_{dose}nM", f"gemcitabine_{dose}nM"
        _write(held, [r for r in rows if r[1] != cond])
        _write(held, [r for r in rows if r[1] == cond], f"measurements_{dose}nM.tsv")


if __name__ == "__main__":
    for folder in ("browning2021_wm983b", "browning2021_wm793b", "freyer_sutherland1986_emt6ro",
                   "matthews2022_gemcitabine",
                   *(f"matthews2022_gemcitabine/held_out_{d}nM" for d in HELD_OUT)):
        os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    browning("WM983b")
    browning("WM793b")
    freyer()
    matthews()
