"""The cancer-stem-cell niche model: fields, processes M1-M18, their loss bounds.

Every process is a small function ``process(f, p, d, r)`` that reads fields
``f`` (by name), parameters ``p`` (``default_parameters``) and shared
quantities ``d`` (total cell fraction, room, HIF activity, ...) and adds its
terms to the ``Rates`` r. ``niche_reaction`` runs them all inside one traced
function, so XLA fuses the whole model into one pass over the grid.

Notation in the docstrings: φ = total cell volume fraction, room = the share of
division (and recruitment) that crowding allows, clip((1 − φ)/(1 − φ_packed), 0, 1),
T = progenitor/differentiated tumor cells, C = CSCs, H(x, K) = x/(x + K),
HIF = hypoxia response in [0, 1]. Units: um, min, mmHg (oxygen), nM (other
solutes), volume fraction (cells, vessels), relative density (ECM).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp

from . import kernels as K
from ._grid import Dirichlet, Grid, RadialGrid
from ._species import Species, SpeciesTable
from ._stepper import Rates

MAX_CELL_SPEED = 2.0  # um/min: cap on drift speed (static: it sets the cell sub-steps)
ORGANOID_MEDIUM_O2 = 160.0  # mmHg: 21% O2 incubator medium (= PhysiCell o2_reference)
# um: how far the bulk medium's relaxation lets a depletion reach into it
# (``medium_exchange``: rate D/MIXING_LENGTH² per solute); the bulk starts this
# much inside the unstirred layer's outer edge, so the layer keeps its thickness
MIXING_LENGTH = 10.0

CYTOKINE_D = "assumed: 3e3 um^2/min (5e-7 cm^2/s), tissue value for 10-50 kDa proteins"
CYTOKINE_DECAY = "assumed: 0.01/min (about 1 h half-life in tissue)"
SMALL_D = "assumed: 1e4 um^2/min (1.7e-6 cm^2/s), small molecule hindered in tissue"
SMALL_DECAY = "assumed: 0.005/min (about 2 h local half-life)"
ANTIBODY = "assumed: 600 um^2/min (1e-7 cm^2/s) for a 150 kDa IgG in tissue; decay 1e-4/min (days)"
TUMOR_MU = "assumed: 0: adhesive tumor cells move only when pushed (pressure_flux)"
IMMUNE_MU = "assumed: T cells crawl about 10 um/min with about 2 min persistence: mu = v^2 tau/3 ~ 60 um^2/min"

# name, kind, diffusion (cells: motility), decay, units, source, variable mobility, group
_FIELDS = [
    ("csc", "cell", 0.0, 0.0, "volume fraction", TUMOR_MU, False, "tumor cells"),
    ("tumor", "cell", 0.0, 0.0, "volume fraction", TUMOR_MU, False, "tumor cells"),
    ("debris", "cell", 0.0, 0.0, "volume fraction", "necrotic/dead cells; moved only by pressure", False, "tumor cells"),
    ("damaged", "cell", 0.0, 0.0, "volume fraction", "drug-damaged tumor cells committed to die: alive, not dividing, PI-negative; moved only by pressure", False, "tumor cells"),
    ("fibroblast", "cell", 1.0, 0.0, "volume fraction", "assumed: slow stromal motility", False, "stroma"),
    ("caf", "cell", 1.0, 0.0, "volume fraction", "assumed: slow stromal motility", False, "stroma"),
    ("msc", "cell", 10.0, 0.0, "volume fraction", "assumed: MSCs migrate (homing)", True, "stroma"),
    ("msc_trail", "cell", 10.0, 0.0, "volume fraction", "engineered TRAIL-MSCs; as MSCs", True, "stroma"),
    ("vessel", "matrix", 0.0, 0.0, "volume fraction", "endothelium; grows by angiogenesis", False, "stroma"),
    ("m1", "cell", 30.0, 0.0, "volume fraction", "assumed: macrophages half as motile as T cells", True, "immune"),
    ("m2", "cell", 30.0, 0.0, "volume fraction", "assumed: as M1", True, "immune"),
    ("cd8", "cell", 60.0, 0.0, "volume fraction", IMMUNE_MU, True, "immune"),
    ("treg", "cell", 60.0, 0.0, "volume fraction", IMMUNE_MU, True, "immune"),
    ("car_t", "cell", 60.0, 0.0, "volume fraction", IMMUNE_MU, True, "immune"),
    ("ecm", "matrix", 0.0, 0.0, "relative density", "does not diffuse; CAFs deposit, MMPs degrade", False, "matrix"),
    ("oxygen", "solute", 1e5, 0.1, "mmHg", "PhysiCell default (oxygen_diffusion_coefficient, oxygen_decay_rate)", False, "solutes"),
    ("vegf", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("tgfb", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("il6", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("cxcl12", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("il10", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("ccl2", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("lactate", "solute", 3e4, 0.0, "nM", "assumed: 3e4 um^2/min (5e-6 cm^2/s); cleared by vessels and medium", False, "solutes"),
    ("trail", "solute", 3e3, 0.01, "nM", f"{CYTOKINE_D}; {CYTOKINE_DECAY}", False, "solutes"),
    ("exosome", "solute", 60.0, 1e-3, "nM", "assumed: 100 nm vesicles, 1e-8 cm^2/s; about 12 h half-life", True, "exosomes"),
    ("chemo", "solute", 1e4, 0.005, "nM", f"{SMALL_D}; {SMALL_DECAY}", True, "drugs"),
    ("anti_pd1", "solute", 600.0, 1e-4, "nM", ANTIBODY, True, "drugs"),
    ("anti_vegf", "solute", 600.0, 1e-4, "nM", ANTIBODY, True, "drugs"),
    ("csc_inhibitor", "solute", 1e4, 0.005, "nM", f"{SMALL_D}; {SMALL_DECAY}", True, "drugs"),
    ("exosome_inhibitor", "solute", 1e4, 0.005, "nM", f"{SMALL_D}; {SMALL_DECAY}", True, "drugs"),
    ("hif_inhibitor", "solute", 1e4, 0.005, "nM", f"{SMALL_D}; {SMALL_DECAY}", True, "drugs"),
    ("ferroptosis_inducer", "solute", 1e4, 0.005, "nM", f"{SMALL_D}; {SMALL_DECAY}", True, "drugs"),
]
FIELD_NAMES = tuple(row[0] for row in _FIELDS)
FIELD_GROUP = {row[0]: row[7] for row in _FIELDS}
CELLS = tuple(row[0] for row in _FIELDS if row[1] == "cell")
TUMOR = ("csc", "tumor")
STROMA = ("fibroblast", "caf", "msc", "msc_trail")
IMMUNE = ("m1", "m2", "cd8", "treg", "car_t")
DRUGS = tuple(row[0] for row in _FIELDS if row[7] == "drugs")
SMALL_MOLECULES = ("chemo", "csc_inhibitor", "exosome_inhibitor", "hif_inhibitor", "ferroptosis_inducer")
ANTIBODIES = ("anti_pd1", "anti_vegf")
HINDERED = tuple(row[0] for row in _FIELDS if row[6])


SOLUTES = tuple(row[0] for row in _FIELDS if row[1] == "solute")
MOBILE = tuple(row[0] for row in _FIELDS if row[1] != "matrix")  # fields with a diffusion value
DEFAULT_DIFFUSION = {row[0]: row[2] for row in _FIELDS if row[1] != "matrix"}
DEFAULT_DECAY = {row[0]: row[3] for row in _FIELDS if row[1] == "solute"}


def transport_bounds() -> dict:
    """Default bounds of the transport values: {path: (lower, upper, scale)}.

    Solute diffusion: half to 1.5 times the default (log); cell motility
    0 to twice the default, at least 10 um²/min (lin); solute decay a tenth to
    ten times the default (log), or 0 to 0.01/min where the default is 0. The
    upper bounds size the plan (RKL stages, cell sub-steps).
    """
    out = {}
    for name, kind, D, decay, *_ in _FIELDS:
        if kind == "solute":
            out[f"diffusion.{name}"] = (D / 2.0, 1.5 * D, "log")
            out[f"decay.{name}"] = (decay / 10.0, 10.0 * decay, "log") if decay else (0.0, 0.01, "lin")
        elif kind == "cell":
            out[f"diffusion.{name}"] = (0.0, max(2.0 * D, 10.0), "lin")
    return out


def niche_species(boundary=None, bounds=None) -> SpeciesTable:
    """The species table of every field, sized for the value bounds.

    boundary: six faces (``Grid`` face order) or None. In the organoid
    geometry the outer faces are the medium: solutes get Dirichlet faces
    there (their values come from the medium levels at run time), other faces
    stay no-flux. bounds: a ``Bounds`` (default: the parameter table's and
    ``transport_bounds``); each species' design diffusion and decay are the
    upper bounds of its values and its uptake the bound of the reaction's loss
    rate (``loss_bounds``), so every value within the bounds runs on one plan.
    """
    from ._parameters import Bounds

    bounds = Bounds.default() if bounds is None else bounds
    losses = loss_bounds(bounds, medium=boundary is not None)
    species = []
    for name, kind, D, decay, units, source, variable, _ in _FIELDS:
        faces = None
        if boundary is not None and kind == "solute":
            faces = tuple(Dirichlet(0.0) if isinstance(b, Dirichlet) else b for b in boundary)
        species.append(Species(
            name, kind,
            bounds.upper(f"diffusion.{name}") if kind != "matrix" else 0.0,
            bounds.upper(f"decay.{name}") if kind == "solute" else 0.0,
            faces, units, 0.0, uptake=losses.get(name, 0.0), variable_diffusion=variable,
            source=source))
    return SpeciesTable(tuple(species))


# --------------------------------------------------------------------------
# shared quantities
def _nonnegative(x):
    """A density's or concentration's positive part, max(x, 0), with slope 1 at x = 0.

    Fields leave 0 only upwards (a drug before its dose, a cytokine nothing
    secretes), so at 0 the derivative that matters is the right-hand one.
    ``jnp.maximum`` has slope 1/2 there, which made the gradient wrong for
    every value whose field starts at 0 (a drug's medium level, issue 10).
    The clip keeps the solvers' round-off undershoots out; NaN passes.
    """
    return jnp.where(x < 0.0, 0.0, x)


def _hill(x, k):
    x = _nonnegative(x)
    return x / (x + k)


def _ramp_down(x, start, full):
    """0 above ``start``, 1 below ``full``, linear between (PhysiCell's oxygen ramps in
    pO2), its two corners rounded over O2_ONSET mmHg:
    (w·softplus(u/w) − w·softplus((u − width)/w)) / width, u = start − x.

    Equal to the linear ramp within 1e-12 beyond 3 mmHg of each corner (w·log 2 / width
    at a corner itself). Why: a hard corner put a kink in the NLL of a fit each time
    a voxel's pO2 crossed it between two steps (the necrotic core's onset: the
    gradient jumped from −2 to +371 within 5e-5 of the log division rate, measured).
    The parameter bounds keep start > full; the floor on the width only keeps a
    value pushed outside them from dividing by zero.
    """
    width = jnp.maximum(start - full, 1e-3)
    u = start - x
    w = O2_ONSET
    return (jax.nn.softplus(u / w) - jax.nn.softplus((u - width) / w)) * (w / width)


def equal_volume_radius(volume):
    """Radius (um) of the sphere of ``volume`` (um³): (3V/4π)^(1/3), finite gradient at V → 0."""
    v = jnp.maximum(jnp.asarray(volume), 1e-30)
    return (3.0 * v / (4.0 * math.pi)) ** (1.0 / 3.0)


def region_radius(volume, r0):
    """Equal-volume radius (um) of a region that can vanish, smooth at V = 0:
    (3(V + V0)/4π)^(1/3) − r0·V0/(V + V0), V0 = 4π r0³/3.

    0 at V = 0 with slope 1/(π r0²) there, where the plain cube root's slope is
    infinite (a region that appears as a parameter crosses its onset put a cusp in a
    fit's NLL). Increasing, and above the plain radius r by r0³/(3r²) − r0⁴/r³ to
    leading order (0.012 um at r = 50 um for r0 = 5 um)."""
    # r0·((1 + x)^(1/3) − 1/(1 + x)), x = V/V0: exactly 0 at V = 0; round-off below 0
    # is let through (no clamp at 0, whose derivative there would be halved)
    x = jnp.maximum(jnp.asarray(volume) / (4.0 * math.pi * r0 ** 3 / 3.0), -0.5)
    return r0 * ((1.0 + x) ** (1.0 / 3.0) - 1.0 / (1.0 + x))


O2_ONSET = 0.1  # mmHg: width of the smooth onset of division at its threshold, and of the
#                oxygen ramps' rounded corners (``_ramp_down``)


def proliferation_onset(o2, p):
    """x of ``proliferation_o2``: (O2 − threshold)/(reference − threshold), its onset at the
    threshold smoothed over w = O2_ONSET mmHg: w·softplus(·/w), at most 1."""
    above = jax.nn.softplus((o2 - p["o2_proliferation_threshold"]) / O2_ONSET) * O2_ONSET
    return jnp.minimum(above / (p["o2_reference"] - p["o2_proliferation_threshold"]), 1.0)


def proliferation_o2(o2, p):
    """Oxygen factor of division g = x/(K + (1 − K)·x), x = (O2 − 5)/(160 − 5) from 0 to 1.

    x is PhysiCell's linear ramp from the proliferation threshold to the
    reference pO2; K = ``o2_proliferation_shape``: 1 gives the ramp itself
    (PhysiCell), K < 1 a saturating response, half-maximal at x = K/(1 + K)
    (K = 0.1: near 19 mmHg), as for cells whose division barely slows until
    the pO2 is low. 1 at the reference; 0 below the threshold, with the
    onset smoothed over O2_ONSET = 0.1 mmHg (``proliferation_onset``): a hard
    onset (x clipped at 0) put a kink in every result each time a shell's
    pO2 crossed the threshold between two steps, so that a fit's objective
    was rough on the scale of 1e-5 in a log parameter (central differences
    off by 0.4%, curvature estimates from −3.5e5 to 2e5 at the WM983b fit's
    best start, shape 0.02, where g's slope jumps from 0 to 1/K at the
    threshold) and L-BFGS stalled there.
    """
    x = proliferation_onset(o2, p)
    k = p["o2_proliferation_shape"]
    return x / (k + (1.0 - k) * x)


def shared_quantities(f, p) -> dict:
    """φ, room, oxygen-dependent factors and HIF activity, computed once per evaluation."""
    o2 = _nonnegative(f["oxygen"])
    phi = sum(f[c] for c in CELLS)
    d = {
        "phi": phi,
        "room": jnp.clip((1.0 - phi) / (1.0 - p["packing_fraction"]), 0.0, 1.0),
        "o2": o2,
        "o2_growth": proliferation_o2(o2, p),
        "o2_necrosis": _ramp_down(o2, p["o2_necrosis_threshold"], p["o2_necrosis_max"]),
        "lactate": _hill(f["lactate"], p["lactate_k"]),
        "il6": _hill(f["il6"], p["il6_k"]),
        "cxcl12": _hill(f["cxcl12"], p["cxcl12_k"]),
        "tgfb": _hill(f["tgfb"], p["tgfb_k"]),
        "exosome": _hill(f["exosome"], p["exosome_k"]),
        "pathway_block": 1.0 - p["pathway_inhibitor_max"] * _hill(f["csc_inhibitor"], p["pathway_inhibitor_k"]),
    }
    d["hif"] = hif_activity(f, p, d)
    d["suppression"] = immune_suppression(f, p, d)
    return d


def hif_activity(f, p, d):
    """HIF = ramp(O2: 0 above 15 mmHg, 1 below 4 mmHg; corners rounded over 0.1 mmHg) / (1 + [HIF inhibitor]/K_hifi).

    PhysiCell's hypoxic thresholds; the HIF inhibitor (a drug field) lowers every
    HIF-driven term (self-renewal, dedifferentiation, VEGF, PD-L1, glycolysis).
    """
    ramp = _ramp_down(d["o2"], p["o2_hypoxic_threshold"], p["o2_hypoxic_saturation"])
    return ramp / (1.0 + _nonnegative(f["hif_inhibitor"]) / p["hif_inhibitor_k"])


def immune_suppression(f, p, d):
    """Effector function multiplier S = 1/((1 + IL10/K)(1 + TGFβ/K)(1 + lactate/K)(1 + Treg/K)).

    M6 (IL-10, TGF-β from M2 TAMs), M12 (acidity) and Treg suppression, shared
    by T-cell and CAR-T killing and expansion.
    """
    return 1.0 / ((1.0 + _nonnegative(f["il10"]) / p["il10_k"])
                  * (1.0 + _nonnegative(f["tgfb"]) / p["tgfb_k"])
                  * (1.0 + _nonnegative(f["lactate"]) / p["lactate_k"])
                  * (1.0 + f["treg"] / p["treg_k"]))


# --------------------------------------------------------------------------
# processes
def oxygen_uptake(f, p, d, r):
    """∂O2/∂t −= V · (T + C + damaged + a_s·stroma + a_i·immune) · O2/(K + O2) (Michaelis-Menten; V = 1000 mmHg/min, K = 1 mmHg); solved with diffusion.

    Nearly zero-order down to a few mmHg, as measured respiration is, so a
    large enough organoid runs out of oxygen at its centre (PhysiCell's linear
    uptake, 10/min · O2, only approaches zero exponentially). Stromal and
    immune cells respire a share a_s, a_i of what tumour cells do per volume;
    debris none. The loss rate is frozen at the step's start with the
    diffusion solve.
    """
    consumers = (f["tumor"] + f["csc"] + f["damaged"]
                 + p["o2_uptake_stroma"] * sum(f[c] for c in STROMA)
                 + p["o2_uptake_immune"] * sum(f[c] for c in IMMUNE))
    r.lose("oxygen", p["o2_uptake"] * consumers / (p["o2_uptake_k"] + d["o2"]))


def _oxygen_uptake_bound(b):
    return {"oxygen": b.upper("o2_uptake") / b.lower("o2_uptake_k")}  # shares ≤ 1, φ ≤ 1, O2 ≥ 0


def medium_exchange(f, p, d, r):
    """Organoid medium: ∂c/∂t += (D_c/ℓ²)·w·(c_bulk − c) for every solute, w = S((r − R − δ + ℓ)/h + 1/2), S a smoothstep from 0 to 1.

    A culture well's medium is well mixed (convection) except for an
    unstirred layer of thickness δ (``medium_unstirred_layer``) around the
    organoid, through which solutes only diffuse. Beyond the layer every
    solute relaxes to the bulk level c_bulk (the medium's, ``bulk_level``) at
    the rate D_c/ℓ², ℓ = ``MIXING_LENGTH`` = 10 um: a depletion reaches about ℓ
    into the bulk, so the bulk starts ℓ inside the layer's outer edge. R is the
    equal-volume radius of the tumour body (``body_radius``), so the layer
    moves with the growing organoid and w changes smoothly with R (over one
    voxel h). Results do not depend on where the box ends, as long as it holds
    the layer (``MediumLayerWarning`` where it does not: ``organoid`` at the
    start, a run once the organoid has grown past it); on a ``RadialGrid`` it
    need not: the layer beyond the shells is the outer face's far field
    (``Rates.far_field(R + δ)``, docs/radial.md).
    Only in the organoid geometry (``medium_only``).
    """
    for s in SOLUTES:
        k = d["exchange_rate"][s] * d["bulk"]
        r.lose(s, k).produce(s, k * d["bulk_level"][s])


def _medium_exchange_bound(b):
    return {s: b.upper(f"diffusion.{s}") / MIXING_LENGTH**2 for s in SOLUTES}  # w ≤ 1


def tumor_proliferation(f, p, d, r):
    """∂T/∂t += r_T · g(O2) · T · room − 2q · r_T · g(O2) · room · T, g = ``proliferation_o2``.

    PhysiCell's oxygen-scaled cycle (M18: division creates volume). Progenitor
    cells have a limited proliferative capacity (the CSC hierarchy): a share q
    of the daughters of each division differentiate terminally and are lost
    (removed as apoptotic cells are), so the progenitor pool grows at
    (1 − 2q)·r_T·g on its own and the tumour's long-term growth relies on CSCs.
    """
    division = p["tumor_division_rate"] * d["o2_growth"] * d["room"]
    r.produce("tumor", division * f["tumor"])
    r.lose("tumor", 2.0 * p["progenitor_terminal"] * division)


def self_renewal_share(f, p, d):
    """p_sr = min(p0 + a_HIF·HIF + a_IL6·H(IL6) + a_CXCL12·H(CXCL12) + a_lac·H(lac), p_max) · (1 − i·H(inhibitor))."""
    share = (p["self_renewal_base"] + p["self_renewal_hif"] * d["hif"]
             + p["self_renewal_il6"] * d["il6"] + p["self_renewal_cxcl12"] * d["cxcl12"]
             + p["self_renewal_lactate"] * d["lactate"])
    return jnp.minimum(share, p["self_renewal_max"]) * d["pathway_block"]


def csc_division(f, p, d, r):
    """d(CSC)/dt += k_sr(O2, IL6, CXCL12, lactate) · CSC · (1 − φ), k_sr = r_C·g(O2)·p_sr; ∂T/∂t += r_C·g(O2)·(1 − p_sr)·CSC·room.

    M1 (HIF raises the self-renewal share), M4 (IL-6/CXCL12 via STAT3), M12
    (lactate), M14 (a Notch/Wnt/Hedgehog inhibitor lowers it). A CSC division
    creates volume r_C·g(O2)·C·room, split between CSC (share p_sr) and
    progenitor cells.
    """
    division = p["csc_division_rate"] * d["o2_growth"] * f["csc"] * d["room"]
    share = self_renewal_share(f, p, d)
    r.produce("csc", share * division)
    r.produce("tumor", (1.0 - share) * division)


def dedifferentiation(f, p, d, r):
    """T → CSC at (k_0 + k_HIF·HIF + k_TGFβ·H(TGFβ) + k_IL6·H(IL6)) · (1 − i·H(inhibitor)) (M1, M7, M4, M14)."""
    rate = (p["dedifferentiation_basal"] + p["dedifferentiation_hif"] * d["hif"] + p["dedifferentiation_tgfb"] * d["tgfb"]
            + p["dedifferentiation_il6"] * d["il6"])
    r.move("tumor", "csc", rate * d["pathway_block"])


def apoptosis(f, p, d, r):
    """∂T/∂t −= r_apo·T; ∂C/∂t −= r_apo·(1 − s_IL6·H(IL6))(1 − s_lac·H(lac))·C (M4, M12: CSC survival); the share a_rem of the dead volume → debris, the rest cleared."""
    remains = p["apoptotic_remains"]
    csc = p["apoptosis_rate"] * (1.0 - p["csc_survival_il6"] * d["il6"]) * (
        1.0 - p["csc_survival_lactate"] * d["lactate"])
    for cell, rate in (("tumor", p["apoptosis_rate"]), ("csc", csc)):
        r.lose(cell, rate * (1.0 - remains))
        r.move(cell, "debris", rate * remains)


def necrosis(f, p, d, r):
    """every live cell → debris at r_nec · ramp(O2: 0 above 5, 1 below 2.5 mmHg; corners rounded over 0.1 mmHg) (M3, PhysiCell)."""
    rate = p["necrosis_rate"] * d["o2_necrosis"]
    for c in CELLS:
        if c != "debris":
            r.move(c, "debris", rate)


def debris_clearance(f, p, d, r):
    """∂debris/∂t −= (r_lysis + k_phago·(M1 + M2)) · debris (frees volume)."""
    r.lose("debris", p["debris_lysis_rate"] + p["phagocytosis_rate"] * (f["m1"] + f["m2"]))


def pressure_flux(phi, p):
    """Every cell population drifts with v = −κ∇P, P = (φ − φ_packed)⁺/(1 − φ_packed), |v| ≤ 2 um/min (M18).

    Packed tissue (φ ≤ φ_packed) is at rest; volume made by division raises
    φ above it and the drift moves cells down the pressure gradient into
    voxels with room (the transport never fills a voxel past φ = 1). Nothing
    pushes cells into empty space except pressure from behind, so the
    organoid keeps a sharp front (a porous-medium law) instead of spreading.
    Returns the potential Φ = κ·P (um²/min) of the current total cell
    fraction φ; the cell transport re-evaluates it at every sub-step
    (``Stepper.pressure``), with sub-steps sized by ``pressure_stiffness``.
    """
    return p["tissue_mobility"] * jnp.maximum(phi - p["packing_fraction"], 0.0) / (
        1.0 - p["packing_fraction"])


def net_volume_made(f, r, like):
    """S = Σ_cells (P − L·c) + conversions into cells: the net cell volume the reaction
    ``r`` makes per minute (division less death and lysis), shaped like ``like``."""
    made = jnp.zeros_like(like)
    for c in CELLS:
        made = made + r.production.get(c, 0.0) - r.loss.get(c, 0.0) * f[c]
    for src, dst, rate in r.flows:
        if dst in CELLS:  # a conversion between cells makes no volume: its loss is in r.loss
            made = made + rate * f[src]
    return made


MIXTURE_STIFF = 1e8  # min: the backward-Euler "step" that turns implicit_step into a Poisson solve


def mixture_flow(f, p, r, grid: Grid, halo: K.Halo | None = None):
    """Cells move with the tumour body as one incompressible mixture (M18): v = −∇Ψ, ∇·v = m·S/φ_packed in the body, Ψ = 0 outside.

    S = Σ_cells (P − L·c) + conversions into cells is the net cell volume the
    reaction makes per minute (division less death and lysis). In a packed
    body that volume must move: Ψ solves (λ_out − ∇²)Ψ = m·S/φ_packed,
    λ_out = (1 − occupied)·near/h², so Ψ ≈ 0 a voxel outside the body (its
    free surface, as in Greenspan 1972 and Ward & King 1997), and every cell
    species moves with u = −∇Ψ (``Rates.carry``: bulk motion, not limited by
    the room left in a voxel as crowding and chemotaxis are; |u| + |v| capped
    at 2 um/min). Volume made in the
    rim pushes the front out; volume lost in a necrotic core (lysis) draws
    the tissue inward, so a growing organoid stays packed instead of
    hollowing. near = ``near_outside``: 1 within FREE_SURFACE_REACH voxels of
    a voxel at most half occupied (the medium, or a real cavity), 0 deeper
    in. A slight deficit deep in the body is not a free surface: there Ψ < 0
    (the core's sink), so λ_out·Ψ cancelled the inflow, the deficit grew and
    the core emptied (docs/radial.md: the untreated organoid's core from day
    11 at 15 um shells, sooner on finer ones). m = ``mixture_flow`` (1: on;
    0: only ``pressure_flux``, which still relieves any crowding above the
    packing fraction). Ψ is frozen
    over the step (one conjugate-gradient multigrid solve per step,
    ``kernels.implicit_step`` with a step of 1e8 min; on a ``RadialGrid`` the
    same equation in spherical shells, one tridiagonal solve,
    ``kernels.radial_diffusion_step``).
    """
    occupied = occupied_share(f, p)
    source = p["mixture_flow"] * net_volume_made(f, r, occupied) / p["packing_fraction"]
    h = min(grid.spacing)
    outside = ((1.0 - occupied) * near_outside(occupied, grid, halo) / h**2)[None]
    if isinstance(grid, RadialGrid):  # the same equation in spherical shells
        psi = K.radial_diffusion_step(jnp.zeros_like(occupied)[None], MIXTURE_STIFF, h,
                                      jnp.ones((1,), occupied.dtype), outside, None,
                                      source[None])
        return psi[0]
    bc = tuple(None if grid.periodic[a] else (None, None) for a in range(3))
    if halo is not None:  # f holds one slab of a grid split along x (``SlabStepper``)
        bc = (halo,) + bc[1:]
    one = jnp.ones((1,), occupied.dtype)
    psi = K.implicit_step(jnp.zeros_like(occupied)[None], MIXTURE_STIFF, grid.spacing, one,
                          outside, bc, None, source[None])
    return psi[0]


FREE_SURFACE_REACH = 3  # voxels: how far into the body the free-surface term of mixture_flow acts


def near_outside(occupied, grid, halo: K.Halo | None = None):
    """1 where a voxel within FREE_SURFACE_REACH voxels (a cube; shells on a ``RadialGrid``)
    is empty, 0 where every such voxel is at least half occupied; linear between.

    Where ``mixture_flow``'s free-surface term acts: the body's edge and a real
    cavity, not a slight deficit deep inside. Three voxels keep the whole
    front, which the upwind transport spreads over two or three voxels, under
    the term (measured on shells: with one voxel the front smeared and the
    outer radius at day 10 came out 1.4% larger on 15 um shells than on 5 um
    ones; with three, 0.4%, and 0.3% with the term everywhere). A window minimum
    (``lax.reduce_window``, 0.7 ms at 64³ in float32 on 2 cores; shifted copies took
    19 ms), cut at faces (symmetry planes, the centre shell, box faces in the
    medium) and wrapped on periodic axes.
    """
    periodic = (False,) if isinstance(grid, RadialGrid) else grid.periodic
    k = FREE_SURFACE_REACH
    m = occupied
    for ax, wrap in enumerate(periodic):  # separable: one window along each axis
        window, pad = [1] * m.ndim, [(0, 0)] * m.ndim
        window[ax] = 2 * k + 1
        pad[ax] = (k, k)
        if ax == 0 and halo is not None:  # a slab: its neighbours' k edge planes, and
            # beyond a true (closed) face +inf, which a minimum ignores, as the padding
            m, pad[ax] = halo.grown(m, k, 0, jnp.inf), (0, 0)
        elif wrap:
            m, pad[ax] = jnp.pad(m, pad, mode="wrap"), (0, 0)
        m = jax.lax.reduce_window(m, jnp.inf, jax.lax.min, tuple(window), (1,) * m.ndim, pad)
    return jnp.clip(1.0 - 2.0 * m, 0.0, 1.0)


def pressure_stiffness(b) -> float:
    """Bound on dΦ/dφ of ``pressure_flux`` over the parameter bounds: κ_max / (1 − φ_packed,max)."""
    return b.upper("tissue_mobility") / (1.0 - b.upper("packing_fraction"))


def vascular_supply(f, p, d, r):
    """∂c/∂t += k_c·vessel·(c_blood − c) for O2, every drug (c_blood = plasma_<drug>) and lactate (c_blood = 0) (M2)."""
    v = _nonnegative(f["vessel"])
    k = p["vessel_o2_exchange"] * v
    r.produce("oxygen", k * p["blood_o2"]).lose("oxygen", k)
    for drug in DRUGS:
        k = (p["vessel_antibody_exchange"] if drug in ANTIBODIES else p["vessel_drug_exchange"]) * v
        r.lose(drug, k).produce(drug, k * p[f"plasma_{drug}"])
    r.lose("lactate", p["vessel_lactate_clearance"] * v)


def _vascular_supply_bound(b):
    v = b.upper("vessel_max")  # angiogenesis keeps vessel ≤ vessel_max
    out = {"oxygen": b.upper("vessel_o2_exchange") * v,
           "lactate": b.upper("vessel_lactate_clearance") * v}
    for drug in DRUGS:
        key = "vessel_antibody_exchange" if drug in ANTIBODIES else "vessel_drug_exchange"
        out[drug] = b.upper(key) * v
    return out


def vegf_secretion(f, p, d, r):
    """∂VEGF/∂t += s_T·HIF·(T + C) + s_M2·M2 (M2)."""
    r.produce("vegf", p["vegf_secretion"] * d["hif"] * (f["tumor"] + f["csc"])
              + p["vegf_secretion_m2"] * f["m2"])


def angiogenesis(f, p, d, r):
    """∂v/∂t += r_a·H(VEGF_free)·(v + v_seed)·(1 − v/v_max)⁺ − r_reg·(1 − H(VEGF_free))·v, VEGF_free = VEGF/(1 + antiVEGF/K) (M2, M15).

    Only in a tissue (``tissue_only``): an organoid in culture has no
    vasculature to sprout from, so its vessel field stays 0, and with it the
    supply and the immune recruitment at vessels (docs/radial.md, "Vessels in an
    organoid").
    """
    vegf = _nonnegative(f["vegf"]) / (1.0 + _nonnegative(f["anti_vegf"]) / p["anti_vegf_k"])
    signal = _hill(vegf, p["vegf_k"])
    v = f["vessel"]
    r.produce("vessel", p["angiogenesis_rate"] * signal * (v + p["vessel_seed"])
              * jnp.maximum(1.0 - v / p["vessel_max"], 0.0))
    r.lose("vessel", p["vessel_regression"] * (1.0 - signal))


def stromal_secretion(f, p, d, r):
    """∂IL6/∂t += s_IL6·(CAF + MSC); ∂CXCL12/∂t += s_CXCL12·(CAF + MSC) (M4, M13)."""
    stroma = f["caf"] + f["msc"]
    r.produce("il6", p["il6_secretion"] * stroma)
    r.produce("cxcl12", p["cxcl12_secretion"] * stroma)


def immunosuppressive_secretion(f, p, d, r):
    """∂TGFβ/∂t += s·M2 + s·CAF + s·Treg; ∂IL10/∂t += s·M2 + s·Treg (M6)."""
    r.produce("tgfb", p["tgfb_secretion_m2"] * f["m2"] + p["tgfb_secretion_caf"] * f["caf"]
              + p["tgfb_secretion_treg"] * f["treg"])
    r.produce("il10", p["il10_secretion_m2"] * f["m2"] + p["il10_secretion_treg"] * f["treg"])


def chemokine_secretion(f, p, d, r):
    """∂CCL2/∂t += s_T·(1 + HIF)·(T + C) + s_CAF·CAF (M8)."""
    r.produce("ccl2", p["ccl2_secretion"] * (1.0 + d["hif"]) * (f["tumor"] + f["csc"])
              + p["ccl2_secretion_caf"] * f["caf"])


def lactate_secretion(f, p, d, r):
    """∂lac/∂t += s_lac·(1 + HIF)·(T + C) (Warburg glycolysis, M12)."""
    r.produce("lactate", p["lactate_secretion"] * (1.0 + d["hif"]) * (f["tumor"] + f["csc"]))


def exosome_release(f, p, d, r):
    """∂exo/∂t += s_exo·C·(1 − i·H(inhibitor)) − k_up·(stroma + immune)·exo (M5)."""
    block = 1.0 - p["exosome_inhibitor_max"] * _hill(f["exosome_inhibitor"], p["exosome_inhibitor_k"])
    r.produce("exosome", p["exosome_secretion"] * f["csc"] * block)
    r.lose("exosome", p["exosome_uptake"] * sum(f[c] for c in STROMA + IMMUNE))


def _exosome_release_bound(b):
    return {"exosome": b.upper("exosome_uptake")}  # stroma + immune ≤ 1


def exosome_effects(f, p, d, r):
    """fibroblast → CAF at k_exo·H(exo) + k_TGFβ·H(TGFβ); ∂Treg/∂t += r·H(exo)·Treg·room (M5)."""
    r.move("fibroblast", "caf", p["caf_activation_exosome"] * d["exosome"]
           + p["caf_activation_tgfb"] * d["tgfb"])
    r.produce("treg", p["treg_expansion_exosome"] * d["exosome"] * f["treg"] * d["room"])


def macrophage_polarisation(f, p, d, r):
    """M1 → M2 at k_exo·H(exo) + k_IL10·H(IL10) + k_lac·H(lac); M2 → M1 at k_rep (M5, M6, M12)."""
    r.move("m1", "m2", p["m2_polarisation_exosome"] * d["exosome"]
           + p["m2_polarisation_il10"] * _hill(f["il10"], p["il10_k"])
           + p["m2_polarisation_lactate"] * d["lactate"])
    r.move("m2", "m1", p["m1_repolarisation"])


def immune_recruitment(f, p, d, r):
    """At vessels: ∂M1/∂t += r_mac·v·H(CCL2)·room; ∂Treg/∂t += r_treg·v·H(CCL2 + CXCL12)·room;
    ∂CD8/∂t += r_T·v·room/(1 + exo/K_prime) (M8; M5: exosomes impair priming)."""
    v, room = _nonnegative(f["vessel"]), d["room"]
    r.produce("m1", p["macrophage_recruitment"] * v * _hill(f["ccl2"], p["ccl2_k"]) * room)
    r.produce("treg", p["treg_recruitment"] * v * _hill(f["ccl2"] + f["cxcl12"], p["ccl2_k"]) * room)
    priming = 1.0 / (1.0 + _nonnegative(f["exosome"]) / p["priming_exosome_k"])
    r.produce("cd8", p["t_cell_recruitment"] * v * priming * room)


def chemotaxis(f, p, d, r):
    """Φ_mac −= χ·H(CCL2); Φ_Treg −= χ·(H(CCL2) + H(CXCL12)); Φ_MSC −= χ·H(CXCL12) (M8, M13): drift up the gradients."""
    ccl2 = _hill(f["ccl2"], p["ccl2_k"])
    for c in ("m1", "m2"):
        r.drift(c, -p["chemotaxis_macrophage"] * ccl2)
    r.drift("treg", -p["chemotaxis_treg"] * (ccl2 + d["cxcl12"]))
    for c in ("msc", "msc_trail"):
        r.drift(c, -p["chemotaxis_msc"] * d["cxcl12"])


def immune_turnover(f, p, d, r):
    """Macrophages die at r_mac; CD8, Treg and CAR-T at r_T (volume freed)."""
    for c in ("m1", "m2"):
        r.lose(c, p["macrophage_death"])
    for c in ("cd8", "treg", "car_t"):
        r.lose(c, p["t_cell_death"])


def pd_l1(f, p, d):
    """Effective PD-L1 signal of (T, C): PD-L1·(1 − b·H(antiPD1)), CSC PD-L1 raised by HIF (M9)."""
    block = 1.0 - p["anti_pd1_max"] * _hill(f["anti_pd1"], p["anti_pd1_k"])
    return p["pdl1_tumor"] * block, p["pdl1_csc"] * (1.0 + p["pdl1_hif"] * d["hif"]) * block


def t_cell_killing(f, p, d, r):
    """T, C → debris at k·CD8·S/(1 + PD-L1_eff); CD8 expands at r·S·(T + C)·room and exhausts at k_ex·PD-L1-weighted contact (M6, M9, M12)."""
    pdl1_t, pdl1_c = pd_l1(f, p, d)
    attack = p["t_cell_kill_rate"] * f["cd8"] * d["suppression"]
    r.move("tumor", "debris", attack / (1.0 + pdl1_t))
    r.move("csc", "debris", attack / (1.0 + pdl1_c))
    contact = f["tumor"] + f["csc"]
    r.produce("cd8", p["t_cell_expansion"] * d["suppression"] * contact * f["cd8"] * d["room"])
    r.lose("cd8", p["t_cell_exhaustion"] * (pdl1_t * f["tumor"] + pdl1_c * f["csc"]))


def chemotherapy(f, p, d, r):
    """T → debris at ℓ·r_T·g(O2)·room·H(chemo); C at ℓ·r_C·g(O2)·room·H(chemo/(1 + e)), the share s of each kill → damaged instead, keeping the share w of its volume; damaged → debris at r_d; ∂chemo/∂t −= k_u·(T + C)·chemo (M10).

    Kill scales with each population's division rate (ℓ = lethality per
    division); CSCs cycle slower and pump the drug out (ABC transporters:
    intracellular drug = chemo / (1 + efflux)). With s > 0 (``chemo_delayed``)
    killed cells first become damaged: alive, not dividing and PI-negative,
    they die at rate r_d, a delay of 1/r_d on average. With w < 1
    (``damaged_volume``) a damaged cell has shrunk to w of its volume (the
    rest is lost at the kill, as ``apoptosis`` loses what it does not leave
    as debris), so the organoid shrinks before its dead-cell signal rises.
    """
    chemo = _nonnegative(f["chemo"])
    cycling = p["chemo_lethality"] * d["o2_growth"] * d["room"]
    delayed = p["chemo_delayed"]
    kills = (("tumor", cycling * p["tumor_division_rate"] * _hill(chemo, p["chemo_k"])),
             ("csc", cycling * p["csc_division_rate"]
              * _hill(chemo / (1.0 + p["csc_efflux"]), p["chemo_k"])))
    keep = p["damaged_volume"]
    for cell, kill in kills:
        r.move(cell, "debris", kill * (1.0 - delayed))
        r.move(cell, "damaged", kill * delayed * keep)
        r.lose(cell, kill * delayed * (1.0 - keep))
    r.move("damaged", "debris", p["damaged_death_rate"])
    r.lose("chemo", p["chemo_uptake"] * (f["tumor"] + f["csc"]))


def _chemotherapy_bound(b):
    return {"chemo": b.upper("chemo_uptake")}  # T + C ≤ 1


def ferroptosis(f, p, d, r):
    """C → debris at k·H(inducer); T at k·b·H(inducer) (stem-like states are ferroptosis-prone)."""
    kill = p["ferroptosis_kill_rate"] * _hill(f["ferroptosis_inducer"], p["ferroptosis_k"])
    r.move("csc", "debris", kill)
    r.move("tumor", "debris", kill * p["ferroptosis_bulk"])


def ecm_remodelling(f, p, d, r):
    """∂ECM/∂t += s·CAF·(1 − ECM)⁺ − k_MMP·(CAF + M2 + T + C)·ECM (M11)."""
    r.produce("ecm", p["ecm_deposition"] * f["caf"] * jnp.maximum(1.0 - f["ecm"], 0.0))
    r.lose("ecm", p["ecm_degradation"] * (f["caf"] + f["m2"] + f["tumor"] + f["csc"]))


def ecm_barrier(f, p, d, r):
    """D_drug, D_exo and immune/MSC motility × 1/(1 + ECM/K_ECM) (M11)."""
    factor = 1.0 / (1.0 + _nonnegative(f["ecm"]) / p["ecm_k"])
    for name in HINDERED:
        r.scale_mobility(name, factor)


def stroma_growth(f, p, d, r):
    """∂Fib/∂t, ∂CAF/∂t += r_s·g(O2)·(·)·room; fibroblasts, CAFs, MSCs die at r_d."""
    for c in ("fibroblast", "caf"):
        r.produce(c, p["stroma_division_rate"] * d["o2_growth"] * f[c] * d["room"])
    for c in STROMA:
        r.lose(c, p["stroma_death"])


def msc_dynamics(f, p, d, r):
    """∂MSC/∂t += r·v·H(CXCL12)·room; MSC → CAF at k·H(TGFβ) (M13)."""
    r.produce("msc", p["msc_recruitment"] * _nonnegative(f["vessel"]) * d["cxcl12"] * d["room"])
    r.move("msc", "caf", p["msc_to_caf"] * d["tgfb"])


def engineered_msc(f, p, d, r):
    """∂TRAIL/∂t += s·MSC_TRAIL; T, C → debris at k·H(TRAIL) (M13, therapy option)."""
    r.produce("trail", p["trail_secretion"] * f["msc_trail"])
    kill = p["trail_kill_rate"] * _hill(f["trail"], p["trail_k"])
    r.move("tumor", "debris", kill)
    r.move("csc", "debris", kill)


def car_t_killing(f, p, d, r):
    """C → debris at k·CAR·S; T at k·b·CAR·S (antigen-low); CAR-T expand at r·S·C·room (M17)."""
    attack = p["car_t_kill_rate"] * f["car_t"] * d["suppression"]
    r.move("csc", "debris", attack)
    r.move("tumor", "debris", attack * p["car_t_bulk"])
    r.produce("car_t", p["car_t_expansion"] * d["suppression"] * f["csc"] * f["car_t"] * d["room"])


@dataclass(frozen=True)
class Process:
    """A documented process: its reaction terms (``fn(f, p, d, r)``) or, for
    ``kind = "transport"``, the cell-transport law it supplies (pressure_flux),
    for ``kind = "flow"`` the drift every cell follows (``fn(f, p, r, grid)``);
    ``loss_bound(bounds) -> {solute: 1/min}`` bounds the loss rate it adds to
    solutes over the parameter bounds (the step plan allows for it)."""

    name: str
    mechanisms: tuple[str, ...]
    fn: Callable
    loss_bound: Callable | None = None
    kind: str = "reaction"
    medium_only: bool = False  # acts only in an organoid (it has a medium)
    tissue_only: bool = False  # acts only in a tissue (it has vessels)

    def acts(self, medium: bool) -> bool:
        """Whether the process acts in an organoid (medium) or a tissue (not)."""
        return not (self.medium_only and not medium or self.tissue_only and medium)

    @property
    def term(self) -> str:
        return (self.fn.__doc__ or "").strip()


PROCESSES = (
    Process("medium_exchange", (), medium_exchange, _medium_exchange_bound, medium_only=True),
    Process("oxygen_uptake", ("M3",), oxygen_uptake, _oxygen_uptake_bound),
    Process("tumor_proliferation", ("M18",), tumor_proliferation),
    Process("csc_division", ("M1", "M4", "M12", "M14"), csc_division),
    Process("dedifferentiation", ("M1", "M4", "M7", "M14"), dedifferentiation),
    Process("apoptosis", ("M4", "M12"), apoptosis),
    Process("necrosis", ("M3",), necrosis),
    Process("debris_clearance", ("M3",), debris_clearance),
    Process("pressure_flux", ("M18",), pressure_flux, kind="transport"),
    Process("mixture_flow", ("M18",), mixture_flow, kind="flow"),
    Process("vascular_supply", ("M2",), vascular_supply, _vascular_supply_bound),
    Process("vegf_secretion", ("M2",), vegf_secretion),
    Process("angiogenesis", ("M2", "M15"), angiogenesis, tissue_only=True),
    Process("stromal_secretion", ("M4", "M13"), stromal_secretion),
    Process("immunosuppressive_secretion", ("M6",), immunosuppressive_secretion),
    Process("chemokine_secretion", ("M8",), chemokine_secretion),
    Process("lactate_secretion", ("M12",), lactate_secretion),
    Process("exosome_release", ("M5",), exosome_release, _exosome_release_bound),
    Process("exosome_effects", ("M5",), exosome_effects),
    Process("macrophage_polarisation", ("M5", "M6", "M12"), macrophage_polarisation),
    Process("immune_recruitment", ("M5", "M8"), immune_recruitment),
    Process("chemotaxis", ("M8", "M13"), chemotaxis),
    Process("immune_turnover", (), immune_turnover),
    Process("t_cell_killing", ("M6", "M9", "M12"), t_cell_killing),
    Process("chemotherapy", ("M10",), chemotherapy, _chemotherapy_bound),
    Process("ferroptosis", (), ferroptosis),
    Process("ecm_remodelling", ("M11",), ecm_remodelling),
    Process("ecm_barrier", ("M11",), ecm_barrier),
    Process("stroma_growth", (), stroma_growth),
    Process("msc_dynamics", ("M13",), msc_dynamics),
    Process("engineered_msc", ("M13",), engineered_msc),
    Process("car_t_killing", ("M17",), car_t_killing),
)
# Read by processes but documented apart (shared factors and the dose event):
HELPERS = {"hif_activity": ("M1",), "immune_suppression": ("M6", "M12"), "pd_l1": ("M9",),
           "self_renewal_share": ("M1", "M4", "M14"), "radiotherapy": ("M16",)}


def _run_processes(f, p, d, medium: bool = False):
    """The reaction processes that act in an organoid (``medium``) or a tissue, summed."""
    r = Rates()
    for proc in PROCESSES:
        if proc.kind == "reaction" and proc.acts(medium):
            proc.fn(f, p, d, r)
    return r


def niche_reaction(f, p, t=0.0):
    """Every reaction process of a tissue, in one traced function (one fused pass).

    Without the grid's parts (mixture flow; the organoid's medium exchange): a run's
    is ``NicheReaction``."""
    del t
    return _run_processes(f, p, shared_quantities(f, p))


BODY = ("tumor", "csc", "debris", "damaged")  # the fields that make up the tumour body


def occupied_share(f, p):
    """Share of each voxel the tumour body occupies, min(Σ BODY / φ_packed, 1)."""
    return jnp.minimum(sum(f[n] for n in BODY) / p["packing_fraction"], 1.0)


def integrate(x, grid, copies: int = 1, axis_name: str | None = None):
    """∫ x dV (um³ · x's unit) over the body: Σ x · voxel · copies on a Cartesian grid
    (copies = 8 for an octant), Σ x_i V_i over the shells of a ``RadialGrid``."""
    if isinstance(grid, RadialGrid):
        return jnp.sum(x * jnp.asarray(grid.volumes(), x.dtype), axis=-1)
    total = jnp.sum(x)
    if axis_name is not None:  # x is one slab of a split grid: the sum over all of them
        total = jax.lax.psum(total, axis_name)
    return total * grid.voxel_volume * copies


def body_radius(f, p, grid, copies: int, axis_name: str | None = None):
    """Equal-volume radius (um) of the tumour body: ∫ occupied share dV (``integrate``)."""
    return equal_volume_radius(integrate(occupied_share(f, p), grid, copies, axis_name))


def radial_distance(grid, corner: bool, dtype):
    """Distance (um) of every voxel centre (X, Y, Z) from the organoid's or
    tumour's centre: the grid's lower corner (an octant) or the box centre;
    on a ``RadialGrid``, the shell-centre radii (n,)."""
    if isinstance(grid, RadialGrid):
        return jnp.asarray(grid.centers(), dtype)
    axes = []
    for a in range(3):
        x = grid.centers(a) - (0.0 if corner else grid.extent[a] / 2)
        axes.append(jnp.asarray(x, dtype) ** 2)
    return jnp.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])


@dataclass(frozen=True)
class NicheReaction:
    """The model's reaction on a grid: ``niche_reaction`` plus the mixture flow
    (``mixture_flow``) and, for an organoid, its well-mixed medium (``medium_exchange``).

    grid, names: the run's grid and field names (table order); octant: the
    organoid's centre sits at the grid's lower corner (one eighth simulated),
    else at the box centre; medium: an organoid (False: a tissue). Static and
    hashable (part of the ``Stepper``). On a ``RadialGrid`` (a spherical
    organoid, ``tmesim.spheroid``; octant False) the same terms, with distances,
    volumes and the mixture flow of the shells (``radial_distance``,
    ``integrate``, ``mixture_flow``).
    """

    grid: Grid
    names: tuple
    octant: bool = True
    medium: bool = True
    slabs: int = 1

    def on_slabs(self, count: int) -> NicheReaction:
        """This reaction on one of ``count`` slabs of its grid split along x, inside
        ``shard_map`` over mesh axis "x" (``SlabStepper``): the body's volume summed over
        every slab, each slab's own distances, the mixture flow's window and solve
        reading the neighbours' planes."""
        width = self.grid.shape[0] // count
        if count > 1 and width < FREE_SURFACE_REACH:
            raise ValueError(f"the niche model on {count} slabs of {width} voxels along x: "
                             f"each slab needs at least {FREE_SURFACE_REACH} (the mixture "
                             f"flow's window reaches that far); use fewer devices")
        return replace(self, slabs=count)

    def _halo(self):
        return None if self.slabs == 1 else K.Halo(
            "x", self.slabs, None if self.grid.periodic[0] else (None, None))

    def _distance(self, dtype):
        whole = radial_distance(self.grid, self.octant, dtype)
        if self.slabs == 1:
            return whole
        width = self.grid.shape[0] // self.slabs
        return jax.lax.dynamic_slice_in_dim(whole, jax.lax.axis_index("x") * width, width, 0)

    def bulk_weight(self, p, radius):
        """w of ``medium_exchange``: 0 in the organoid and its unstirred layer, 1 in the bulk;
        radius: the body's (``body_radius``)."""
        dtype = jnp.result_type(p["packing_fraction"])
        edge = radius + p["medium_unstirred_layer"] - MIXING_LENGTH
        h = min(self.grid.spacing)
        x = jnp.clip((self._distance(dtype) - edge) / h + 0.5, 0.0, 1.0)
        # smoothstep, not the linear ramp: no kink where a voxel enters or leaves
        # the ramp, which finite differences of a whole run kept crossing
        return x * x * (3.0 - 2.0 * x)

    def __call__(self, f, p, t=0.0):
        del t
        d = shared_quantities(f, p)
        far = None
        if self.medium:
            radius = body_radius(f, p, self.grid, 8 if self.octant else 1,
                                 None if self.slabs == 1 else "x")
            d["bulk"] = self.bulk_weight(p, radius)
            index = {n: i for i, n in enumerate(self.names)}
            d["bulk_level"] = {s: p["bulk_level"][index[s]] for s in SOLUTES}
            d["exchange_rate"] = {s: p["diffusion"][index[s]] / MIXING_LENGTH**2 for s in SOLUTES}
            if isinstance(self.grid, RadialGrid):
                # a layer wider than the shells: the outer face meets the rest of it
                # (the bulk's relaxation holds the level from about R + δ on)
                far = radius + p["medium_unstirred_layer"]
        r = _run_processes(f, p, d, self.medium)
        if far is not None:
            r.far_field(far)
        return r.carry(mixture_flow(f, p, r, self.grid, self._halo()))


def loss_bounds(bounds, medium: bool = False) -> dict:
    """Per solute, the largest loss rate (1/min) the reaction can add within ``bounds``;
    medium: an organoid's (``medium_exchange`` counts)."""
    out: dict = {}
    for proc in PROCESSES:
        if proc.acts(medium) and proc.loss_bound is not None:
            for name, rate in proc.loss_bound(bounds).items():
                out[name] = out.get(name, 0.0) + float(rate)
    return out


# --------------------------------------------------------------------------
def radiotherapy(fields, table: SpeciesTable, p, dose):
    """A dose event (M16): survival S = exp(−α·D_e − β·D_e²), D_e = dose·OMF(O2).

    OMF = (OER·pO2 + K)/(OER·(pO2 + K)) (Alper-Howard-Flanders): 1 when
    well oxygenated, 1/OER when anoxic, so hypoxic cells are spared. CSCs
    have α, β scaled by ``rt_csc_resistance``. Killed cells become debris.
    fields: stacked (F, X, Y, Z); dose in Gy; returns the new stacked fields.
    """
    i = table.index
    o2 = _nonnegative(fields[i("oxygen")])
    omf = (p["rt_oer"] * o2 + p["rt_oer_k"]) / (p["rt_oer"] * (o2 + p["rt_oer_k"]))
    de = dose * omf
    out = fields
    for name, scale in (("tumor", 1.0), ("csc", p["rt_csc_resistance"])):
        surviving = jnp.exp(-scale * (p["rt_alpha"] * de + p["rt_beta"] * de**2))
        killed = fields[i(name)] * (1.0 - surviving)
        out = out.at[i(name)].add(-killed).at[i("debris")].add(killed)
    return out
