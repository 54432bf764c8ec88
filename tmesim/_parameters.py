"""The model's parameter table: every value with its unit, meaning, source and bounds.

One row per parameter. ``default_parameters()`` turns the table into the flat
pytree (name -> scalar array) that the reaction reads and calibration
differentiates. Sources: "PhysiCell" rows are the PhysiCell v1.14.2 defaults
(recorded in docs/data/physicell_default_parameters.csv, row name given);
"assumed" rows give the reason for the value. Concentrations other than
oxygen are in nM; cell and matrix densities are volume fractions (0..1 of a
voxel); ECM density is relative (1 = dense CAF-made stroma).

Bounds. Every row has a lower and an upper bound, the range a run may use,
and a natural scale for fitting: "log" for rates and constants, "logit" for
shares in [0, 1], "lin" for levels and thresholds. Rates may be 0 (a
process switched off; a fit on the log scale sets positive bounds of its
own); constants that divide (half-saturation levels) stay positive. The
time-stepping plan is sized from the bounds (``_model.loss_bounds``,
``_model.pressure_stiffness``), never from the current value, so any value
within them runs on the same compiled program; a value outside them is
refused (``check_bounds``). Most rows go up to 10 times the default; the
rows that size the plan (oxygen uptake, vessel exchange, tissue mobility and
packing) have narrower bounds: widening them costs RKL stages or cell
sub-steps (``Bounds.override``, or a scenario's [bounds] table).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Parameter(NamedTuple):
    name: str
    value: float
    unit: str
    process: str  # the process (or "fields"/"geometry") that reads it
    meaning: str
    source: str
    lower: float = 0.0
    upper: float = math.inf
    scale: str = "lin"  # "log" | "logit" | "lin": the natural scale for fitting


PC = "PhysiCell default ({})"
HILL = "assumed: half-saturation at the concentration a few hours of secretion build up"

_ROWS = [
    # --- oxygen response (PhysiCell's standard oxygen model) -----------------
    ("o2_uptake", 1000.0, "mmHg/min", "oxygen_uptake", "maximal O2 consumption of packed cells (per unit volume fraction)", "50 amol O2/cell/s at PhysiCell's 2494 um^3 cells and 1.3 uM/mmHg solubility (925 mmHg/min, rounded up); measured rates of cultured mammalian cells range from <1 to >350 amol/cell/s, loosely proportional to cell volume (Wagner, Venkataraman & Buettner 2011, Free Radic Biol Med 51:700), A549 lung cancer cells 88 (5.3 fmol/min: Molter et al. 2008, IEEE Trans Autom Sci Eng 5:32); = PhysiCell's linear 10/min (cell_oxygen_uptake_rate) at 100 mmHg"),
    ("o2_uptake_stroma", 0.3, "1", "oxygen_uptake", "O2 consumption of stromal cells (fibroblasts, CAFs, MSCs) per volume, relative to tumour cells", "assumed: quiescent cells respire less per volume than proliferating ones (plateau-phase cells consume 1.5-5 times less than exponentially growing ones: Wagner, Venkataraman & Buettner 2011, Free Radic Biol Med 51:700, Table 3)"),
    ("o2_uptake_immune", 0.3, "1", "oxygen_uptake", "O2 consumption of immune cells (macrophages, T cells, CAR-T) per volume, relative to tumour cells", "assumed: as o2_uptake_stroma (resting immune cells are small and quiescent; issue 4 found tumour-like uptake by immune cells too high)"),
    ("o2_uptake_k", 1.0, "mmHg", "oxygen_uptake", "pO2 of half-maximal O2 consumption (Michaelis constant)", "measured lower: the p50 of respiration is 0.4 mmHg in 32D cells, 0.08-0.75 mmHg in mitochondria and small cells (Gnaiger 2010, Adv Exp Med Biol 662:7); 1 mmHg, just above, is the bound's floor (it sizes the plan's O2 loss bound); consumption stays within 20% of its maximum above 4 mmHg"),
    ("o2_proliferation_threshold", 5.0, "mmHg", "tumor_proliferation", "no proliferation below this pO2", PC.format("o2_proliferation_threshold")),
    ("o2_proliferation_shape", 1.0, "1", "tumor_proliferation", "shape K of the oxygen factor of division x/(K + (1 - K)x), x the linear ramp (its onset at the threshold smoothed over 0.1 mmHg): 1 linear (PhysiCell), below 1 saturating", "PhysiCell's linear ramp (K = 1); a saturating response (K < 1) is an option to calibrate"),
    ("o2_reference", 160.0, "mmHg", "tumor_proliferation", "pO2 at which the reference division rate applies", PC.format("o2_reference")),
    ("o2_hypoxic_threshold", 15.0, "mmHg", "hif_activity", "HIF response starts below this pO2", PC.format("o2_hypoxic_threshold")),
    ("o2_hypoxic_saturation", 4.0, "mmHg", "hif_activity", "HIF response is full below this pO2", PC.format("o2_hypoxic_saturation")),
    ("o2_necrosis_threshold", 5.0, "mmHg", "necrosis", "necrosis starts below this pO2", PC.format("o2_necrosis_threshold")),
    ("o2_necrosis_max", 2.5, "mmHg", "necrosis", "necrosis rate is maximal below this pO2", PC.format("o2_necrosis_max")),
    ("necrosis_rate", 0.0027777778, "1/min", "necrosis", "maximal necrotic death rate (1/6 h)", PC.format("max_necrosis_rate")),
    ("hif_inhibitor_k", 50.0, "nM", "hif_activity", "HIF-inhibitor concentration halving HIF activity", "assumed: potent small molecule, IC50 tens of nM"),
    # --- medium (organoid) ------------------------------------------------------
    ("medium_unstirred_layer", 100.0, "um", "medium_exchange", "thickness of the unstirred medium around the organoid; beyond it the medium is well mixed at its bulk level", "assumed: 100 um; even in stirred culture pO2 falls continuously from the bulk medium to a spheroid's surface through an unstirred layer (Mueller-Klieser 1984, Biophys J 46:343), whose thickness depends on the culture (a static well's is thicker than a spinner flask's): a value to calibrate; Browning 2021's WM983b spheroids in static 96-well plates fit 694 um [509, 894] (docs/fits.md)"),
    # --- tumor growth ----------------------------------------------------------
    ("tumor_division_rate", 0.00072, "1/min", "tumor_proliferation", "division rate of progenitor/differentiated cells at o2_reference (16 h doubling)", PC.format("live_cycle_entry_rate")),
    ("progenitor_terminal", 0.25, "1", "tumor_proliferation", "share of progenitor daughters that differentiate terminally (stop dividing and die)", "assumed: limited proliferative capacity of non-stem cells (CSC hierarchy); 0.5 would stop net progenitor growth"),
    ("apoptosis_rate", 5.31667e-05, "1/min", "apoptosis", "apoptotic death rate of tumor cells", PC.format("apoptosis_death_rate")),
    ("apoptotic_remains", 0.0, "1", "apoptosis", "share of apoptotic cell volume left as debris, which lysis then removes (1: nothing clears apoptotic bodies, as in culture, where they end in secondary necrosis and stain with PI; 0: phagocytes clear them at once)", "Silva 2010 (FEBS Lett 584:4491): apoptotic cells that are not engulfed undergo secondary necrosis, losing membrane integrity; 0 by default: PhysiCell removes apoptotic cells after their apoptotic phase"),
    ("csc_division_rate", 0.00036, "1/min", "csc_division", "CSC division rate at o2_reference (half the bulk rate: slow-cycling)", "assumed: CSCs cycle about half as fast as bulk cells (quiescence)"),
    ("self_renewal_base", 0.2, "1", "csc_division", "share of new CSC volume that stays CSC in normoxia without niche signals", "assumed: keeps CSCs a minority (<10%) in a normoxic organoid"),
    ("self_renewal_max", 0.9, "1", "csc_division", "upper bound of the self-renewal share", "assumed"),
    ("self_renewal_hif", 0.5, "1", "csc_division", "self-renewal gain at full HIF activity (M1)", "assumed: hypoxia roughly triples stemness-gene expression"),
    ("self_renewal_il6", 0.2, "1", "csc_division", "self-renewal gain at saturating IL-6 (M4)", "assumed"),
    ("self_renewal_cxcl12", 0.15, "1", "csc_division", "self-renewal gain at saturating CXCL12 (M4)", "assumed"),
    ("self_renewal_lactate", 0.1, "1", "csc_division", "self-renewal gain at saturating lactate (M12)", "assumed"),
    ("dedifferentiation_basal", 2e-5, "1/min", "dedifferentiation", "basal tumor -> CSC plasticity", "assumed: keeps a few-percent CSC equilibrium in normoxia"),
    ("dedifferentiation_hif", 2e-4, "1/min", "dedifferentiation", "tumor -> CSC rate at full HIF activity (M1)", "assumed: about 1/(3 days)"),
    ("dedifferentiation_tgfb", 1e-4, "1/min", "dedifferentiation", "tumor -> CSC rate at saturating TGF-beta (EMT, M7)", "assumed"),
    ("dedifferentiation_il6", 5e-5, "1/min", "dedifferentiation", "tumor -> CSC rate at saturating IL-6 (STAT3, M4)", "assumed"),
    ("csc_survival_il6", 0.5, "1", "apoptosis", "fraction of CSC apoptosis removed at saturating IL-6 (M4)", "assumed"),
    ("csc_survival_lactate", 0.3, "1", "apoptosis", "fraction of CSC apoptosis removed at saturating lactate (M12)", "assumed"),
    ("pathway_inhibitor_max", 0.9, "1", "csc_division", "largest fraction of self-renewal/dedifferentiation a Notch/Wnt/Hh inhibitor removes (M14)", "assumed"),
    ("pathway_inhibitor_k", 100.0, "nM", "csc_division", "inhibitor concentration for half effect (M14)", "assumed: IC50 of gamma-secretase inhibitors is tens to hundreds of nM"),
    # --- necrotic debris -------------------------------------------------------------
    ("debris_lysis_rate", 5e-4, "1/min", "debris_clearance", "volume loss of necrotic debris (lysis; the volume freed draws the body inward, mixture_flow)", "ratio of necrotic volume loss to proliferation rate in the Greenspan-type model of Browning et al. 2021 (eLife 10:e73020), gamma about 0.7 (0.66-0.77 for WM983b at three seeding densities, refitted to the means of docs/data/browning2021_confocal_structure.csv with their model; the paper's Table 1 not checked), times tumor_division_rate: 0.7 x 7.2e-4; PhysiCell's lysed necrotic cells lose fluid at 0.05/h = 8.3e-4/min (core/PhysiCell_standard_models.cpp)"),
    ("phagocytosis_rate", 2e-3, "1/min", "debris_clearance", "debris cleared per unit macrophage fraction", "assumed: a macrophage-rich region clears debris in days"),
    # --- mechanics (M18) --------------------------------------------------------------
    ("tissue_mobility", 100.0, "um^2/min", "pressure_flux", "Darcy coefficient: cells drift with v = -k grad(p), p = (phi - packing)+/(1 - packing)", "assumed: lets the front keep pace with a 100-200 um proliferating rim"),
    ("mixture_flow", 1.0, "1", "mixture_flow", "share of the net volume made or lost that moves the body as an incompressible mixture (0: only the crowding pressure moves cells)", "Greenspan 1972 (Stud Appl Math 51:317) and Ward & King 1997 (IMA J Math Appl Med Biol 14:39): a packed spheroid moves with the volume its cells make and lose"),
    ("packing_fraction", 0.8, "volume fraction", "pressure_flux", "cell fraction of packed, unstressed tissue (the rest is interstitium)", "assumed: cells fill about 80% of a spheroid's volume"),
    # --- oxygen supply, vessels and angiogenesis (M2, M15) -----------------------
    ("blood_o2", 40.0, "mmHg", "vascular_supply", "capillary blood pO2", "assumed: mean capillary pO2 (about 5% O2, as PhysiCell's 38 mmHg physioxia)"),
    ("vessel_o2_exchange", 300.0, "1/min", "vascular_supply", "O2 exchange rate per unit vessel fraction", "assumed: 3% vessels keep 30%-cellular stroma near 30 mmHg (300 since stromal and immune cells respire o2_uptake_stroma, o2_uptake_immune = 0.3 of tumour cells; 1000 before)"),
    ("vessel_drug_exchange", 0.5, "1/min", "vascular_supply", "small-molecule drug exchange per unit vessel fraction", "assumed"),
    ("vessel_antibody_exchange", 0.02, "1/min", "vascular_supply", "antibody exchange per unit vessel fraction (slow extravasation)", "assumed: antibodies cross capillaries about 25 times slower than small molecules"),
    ("vessel_lactate_clearance", 0.1, "1/min", "vascular_supply", "lactate washed out per unit vessel fraction", "assumed"),
    ("vegf_secretion", 0.05, "nM/min", "vegf_secretion", "VEGF secretion of fully hypoxic tumor cells (M2)", "assumed: builds to about vegf_k in a hypoxic core"),
    ("vegf_secretion_m2", 0.02, "nM/min", "vegf_secretion", "VEGF secretion of M2 TAMs (M2)", "assumed"),
    ("vegf_k", 1.0, "nM", "angiogenesis", "VEGF for half-maximal sprouting", HILL),
    ("angiogenesis_rate", 2e-4, "1/min", "angiogenesis", "vessel growth rate at saturating VEGF", "assumed: vessel density can double in about 3 days"),
    ("vessel_seed", 0.005, "volume fraction", "angiogenesis", "sprout density that VEGF can grow where no vessel is yet (lumped sprouting from neighbours)", "assumed"),
    ("vessel_max", 0.1, "volume fraction", "angiogenesis", "largest vessel volume fraction", "assumed: about 10% of tissue volume"),
    ("vessel_regression", 2e-5, "1/min", "angiogenesis", "vessel regression rate without VEGF", "assumed: unsupported vessels regress over weeks"),
    ("anti_vegf_k", 1.0, "nM", "angiogenesis", "anti-VEGF concentration halving free VEGF (M15)", "assumed: bevacizumab binds VEGF with sub-nM affinity"),
    # --- plasma drug levels seen by vessels (scenario input; dosing sets them) ----------
    *[(f"plasma_{d}", 0.0, "nM", "vascular_supply", f"plasma concentration of {d.replace('_', ' ')}",
       "scenario input: 0 = no drug") for d in ("chemo", "anti_pd1", "anti_vegf", "csc_inhibitor",
                                                "exosome_inhibitor", "hif_inhibitor", "ferroptosis_inducer")],
    # --- cytokines (M4, M6, M8) ----------------------------------------------------
    ("il6_secretion", 0.02, "nM/min", "stromal_secretion", "IL-6 secretion per unit CAF/MSC fraction (M4)", "assumed"),
    ("cxcl12_secretion", 0.02, "nM/min", "stromal_secretion", "CXCL12 secretion per unit CAF/MSC fraction (M4)", "assumed"),
    ("il6_k", 0.5, "nM", "csc_division", "IL-6 for half-maximal STAT3 effect", HILL),
    ("cxcl12_k", 0.5, "nM", "csc_division", "CXCL12 for half-maximal effect", HILL),
    ("tgfb_secretion_m2", 0.02, "nM/min", "immunosuppressive_secretion", "TGF-beta secretion of M2 TAMs (M6)", "assumed"),
    ("tgfb_secretion_caf", 0.01, "nM/min", "immunosuppressive_secretion", "TGF-beta secretion of CAFs", "assumed"),
    ("tgfb_secretion_treg", 0.02, "nM/min", "immunosuppressive_secretion", "TGF-beta secretion of Tregs", "assumed"),
    ("il10_secretion_m2", 0.02, "nM/min", "immunosuppressive_secretion", "IL-10 secretion of M2 TAMs (M6)", "assumed"),
    ("il10_secretion_treg", 0.02, "nM/min", "immunosuppressive_secretion", "IL-10 secretion of Tregs (M6)", "assumed"),
    ("tgfb_k", 0.5, "nM", "t_cell_killing", "TGF-beta for half-maximal effect", HILL),
    ("il10_k", 0.5, "nM", "t_cell_killing", "IL-10 for half-maximal effect", HILL),
    ("ccl2_secretion", 0.01, "nM/min", "chemokine_secretion", "CCL2 secretion of tumor cells, doubled by HIF (M8)", "assumed"),
    ("ccl2_secretion_caf", 0.01, "nM/min", "chemokine_secretion", "CCL2 secretion of CAFs (M8)", "assumed"),
    ("ccl2_k", 0.5, "nM", "immune_recruitment", "CCL2 for half-maximal recruitment and chemotaxis", HILL),
    # --- exosomes (M5) ------------------------------------------------------------------
    ("exosome_secretion", 0.05, "nM/min", "exosome_release", "exosome cargo release per unit CSC fraction (M5)", "assumed"),
    ("exosome_uptake", 0.01, "1/min", "exosome_release", "exosome uptake per unit stromal/immune fraction", "assumed"),
    ("exosome_k", 0.5, "nM", "exosome_effects", "cargo for half-maximal effect on recipient cells", HILL),
    ("exosome_inhibitor_max", 0.9, "1", "exosome_release", "largest fraction of release blocked (e.g. GW4869)", "assumed"),
    ("exosome_inhibitor_k", 100.0, "nM", "exosome_release", "inhibitor concentration for half effect", "assumed"),
    ("caf_activation_exosome", 2e-4, "1/min", "exosome_effects", "fibroblast -> CAF rate at saturating cargo (M5)", "assumed: a few days"),
    ("caf_activation_tgfb", 1e-4, "1/min", "exosome_effects", "fibroblast -> CAF rate at saturating TGF-beta", "assumed"),
    ("m2_polarisation_exosome", 3e-4, "1/min", "macrophage_polarisation", "M1 -> M2 rate at saturating cargo (M5)", "assumed: about a day"),
    ("m2_polarisation_il10", 2e-4, "1/min", "macrophage_polarisation", "M1 -> M2 rate at saturating IL-10", "assumed"),
    ("m2_polarisation_lactate", 1e-4, "1/min", "macrophage_polarisation", "M1 -> M2 rate at saturating lactate (M12)", "assumed"),
    ("m1_repolarisation", 1e-4, "1/min", "macrophage_polarisation", "basal M2 -> M1 rate", "assumed"),
    ("treg_expansion_exosome", 3e-4, "1/min", "exosome_effects", "Treg proliferation at saturating cargo (M5)", "assumed"),
    ("priming_exosome_k", 0.5, "nM", "immune_recruitment", "cargo that halves effector T-cell priming (DC impairment, M5)", HILL),
    # --- immune cells (M6, M8, M9) ------------------------------------------------
    ("macrophage_recruitment", 1.7e-4, "1/min", "immune_recruitment", "monocyte influx per unit vessel fraction at saturating CCL2", "assumed: r·v/death at 3% vessels equals the tissue's initial macrophage share (0.036); 5e-3 filled every voxel's room"),
    ("treg_recruitment", 7e-5, "1/min", "immune_recruitment", "Treg influx per unit vessel fraction at saturating CCL2/CXCL12", "assumed: r·v/death at 3% vessels equals the tissue's initial Treg share (0.009)"),
    ("t_cell_recruitment", 1.15e-4, "1/min", "immune_recruitment", "effector T-cell influx per unit vessel fraction", "assumed: r·v/death at 3% vessels equals the tissue's initial CD8 share (0.015); 5e-3 let CD8 fill 65% of the room"),
    ("msc_recruitment", 1e-3, "1/min", "msc_dynamics", "MSC influx per unit vessel fraction at saturating CXCL12 (M13)", "assumed"),
    ("macrophage_death", 1.4e-4, "1/min", "immune_turnover", "macrophage death rate (5-day life)", "assumed: tissue macrophage life of days"),
    ("t_cell_death", 2.3e-4, "1/min", "immune_turnover", "effector/regulatory T-cell death rate (3-day life)", "assumed"),
    ("chemotaxis_macrophage", 1000.0, "um^2/min", "chemotaxis", "macrophage chemotactic sensitivity to CCL2 (M8)", "assumed: drift of about 1 um/min where H(CCL2) changes by 0.2 over 200 um"),
    ("chemotaxis_treg", 1000.0, "um^2/min", "chemotaxis", "Treg chemotactic sensitivity to CCL2 and CXCL12 (M8)", "assumed"),
    ("chemotaxis_msc", 1000.0, "um^2/min", "chemotaxis", "MSC chemotactic sensitivity to CXCL12 (M13)", "assumed"),
    ("t_cell_kill_rate", 0.02, "1/min", "t_cell_killing", "tumor kill rate per unit effector T-cell fraction, unsuppressed", "assumed: one T cell kills a target in about an hour"),
    ("t_cell_expansion", 5e-3, "1/min", "t_cell_killing", "T-cell proliferation per unit tumor contact", "assumed"),
    ("t_cell_exhaustion", 2e-3, "1/min", "t_cell_killing", "T-cell exhaustion per unit PD-L1-weighted contact (M9)", "assumed"),
    ("treg_k", 0.05, "volume fraction", "t_cell_killing", "Treg density halving effector function", "assumed"),
    ("lactate_k", 5e6, "nM", "t_cell_killing", "lactate halving T-cell function, raising CSC effects (5 mM, M12)", "assumed: tumor lactate reaches 10-40 mM"),
    ("pdl1_tumor", 0.5, "1", "t_cell_killing", "relative PD-L1 of bulk tumor cells (M9)", "assumed"),
    ("pdl1_csc", 2.0, "1", "t_cell_killing", "relative PD-L1 of CSCs in normoxia (M9)", "assumed: CSCs express more PD-L1"),
    ("pdl1_hif", 1.0, "1", "t_cell_killing", "PD-L1 gain at full HIF activity (M9)", "assumed"),
    ("anti_pd1_k", 1.0, "nM", "t_cell_killing", "anti-PD-1 for half-maximal blockade", "assumed: nivolumab EC50 is sub-nM to nM"),
    ("anti_pd1_max", 0.95, "1", "t_cell_killing", "largest fraction of PD-L1 signalling blocked", "assumed"),
    # --- stroma (M11, M13) ----------------------------------------------------------------
    ("stroma_division_rate", 2e-4, "1/min", "stroma_growth", "fibroblast/CAF proliferation (room-limited)", "assumed: about 2.5-day doubling"),
    ("stroma_death", 2e-5, "1/min", "stroma_growth", "fibroblast/CAF/MSC turnover", "assumed"),
    ("msc_to_caf", 1e-4, "1/min", "msc_dynamics", "MSC -> CAF rate at saturating TGF-beta (M13)", "assumed"),
    ("ecm_deposition", 2e-4, "1/min", "ecm_remodelling", "ECM deposition per unit CAF fraction (relative density per min)", "assumed: dense stroma in about a week"),
    ("ecm_degradation", 1e-4, "1/min", "ecm_remodelling", "MMP degradation per unit CAF/M2/tumor fraction", "assumed"),
    ("ecm_k", 0.5, "1", "ecm_barrier", "ECM density halving drug diffusion and immune motility (M11)", "assumed"),
    # --- lactate (M12) -----------------------------------------------------------------
    ("lactate_secretion", 5e4, "nM/min", "lactate_secretion", "lactate secretion of tumor cells (Warburg), doubled by HIF", "assumed: builds 10-20 mM in a poorly perfused core"),
    # --- therapies (M10, M13, M16, M17) --------------------------------------------------
    ("chemo_lethality", 3.0, "1", "chemotherapy", "kill rate at saturating drug per unit division rate (M10: kill scales with cycling)", "assumed: most cycling bulk cells die within a day of exposure"),
    ("chemo_delayed", 0.0, "1", "chemotherapy", "share of the chemotherapy kill that first makes damaged cells (alive, not dividing, PI-negative) rather than debris at once", "0 by default (the kill is immediate); gemcitabine arrests cells in S phase and they die a day or more later (Matthews 2022: the dead-cell signal rises over days)"),
    ("damaged_volume", 1.0, "1", "chemotherapy", "share of a killed cell's volume that its damaged cell keeps (the rest is lost as it shrinks) until it dies into debris of that volume", "1 by default (no shrinkage); cells dying by drug-induced apoptosis shrink hours before their membranes fail (apoptotic volume decrease: Maeno 2000, PNAS 97:9487)"),
    ("damaged_death_rate", 6.94e-4, "1/min", "chemotherapy", "death rate of damaged cells (1/day: the mean delay from the kill to death)", "assumed: about a day from drug-induced arrest to death"),
    ("chemo_k", 100.0, "nM", "chemotherapy", "intracellular drug for half-maximal kill", "assumed: gemcitabine acts at 10-1000 nM (Matthews et al. 2022, docs/data/matthews2022_pdac_organoid_gemcitabine_per_well.csv)"),
    ("chemo_uptake", 0.02, "1/min", "chemotherapy", "drug uptake per unit tumor fraction", "assumed"),
    ("csc_efflux", 10.0, "1", "chemotherapy", "CSC intracellular drug is 1/(1+efflux) of bulk (ABC transporters, M10)", "assumed"),
    ("ferroptosis_kill_rate", 1e-3, "1/min", "ferroptosis", "kill rate at saturating inducer (CSCs; bulk x ferroptosis_bulk)", "assumed"),
    ("ferroptosis_k", 500.0, "nM", "ferroptosis", "inducer for half-maximal kill", "assumed: RSL3/erastin act at 0.1-10 uM"),
    ("ferroptosis_bulk", 0.3, "1", "ferroptosis", "bulk-cell sensitivity relative to CSCs", "assumed: mesenchymal/stem-like states are more ferroptosis-prone"),
    ("trail_secretion", 0.05, "nM/min", "engineered_msc", "TRAIL secretion per unit engineered-MSC fraction (M13)", "assumed"),
    ("trail_kill_rate", 2e-3, "1/min", "engineered_msc", "kill rate at saturating TRAIL", "assumed"),
    ("trail_k", 0.5, "nM", "engineered_msc", "TRAIL for half-maximal kill", HILL),
    ("car_t_kill_rate", 0.05, "1/min", "car_t_killing", "CSC kill rate per unit CAR-T fraction (M17)", "assumed: faster than endogenous T cells (high-affinity CAR)"),
    ("car_t_bulk", 0.1, "1", "car_t_killing", "antigen on bulk cells relative to CSCs (CD133/CD44 low)", "assumed"),
    ("car_t_expansion", 0.01, "1/min", "car_t_killing", "CAR-T proliferation per unit CSC contact", "assumed"),
    ("rt_alpha", 0.3, "1/Gy", "radiotherapy", "linear-quadratic alpha of bulk tumor cells (M16)", "assumed: typical tumor alpha/beta = 10 Gy"),
    ("rt_beta", 0.03, "1/Gy^2", "radiotherapy", "linear-quadratic beta", "assumed: typical tumor alpha/beta = 10 Gy"),
    ("rt_csc_resistance", 0.5, "1", "radiotherapy", "CSC alpha and beta relative to bulk (DNA-repair, ROS scavenging)", "assumed"),
    ("rt_oer", 3.0, "1", "radiotherapy", "maximal oxygen enhancement ratio", "assumed: Alper-Howard-Flanders form, OER about 3 for X-rays"),
    ("rt_oer_k", 3.0, "mmHg", "radiotherapy", "pO2 of half-maximal oxygen enhancement", "assumed: K about 3 mmHg in the Alper-Howard-Flanders form"),
]


# Explicit bounds (lower, upper, scale); the other rows follow ``_default_bounds``.
_BOUNDS = {
    # plan-sizing rows: the oxygen loss bound is o2_uptake/o2_uptake_k + vessel exchange · vessel_max
    "o2_uptake": (0.0, 1500.0, "log"),
    "o2_uptake_k": (1.0, 10.0, "log"),
    "medium_unstirred_layer": (10.0, 1000.0, "lin"),  # at least _model.MIXING_LENGTH
    "vessel_o2_exchange": (0.0, 2000.0, "log"),
    "vessel_max": (0.05, 0.2, "log"),
    # cell sub-steps follow tissue_mobility / (1 - packing_fraction) (``_model.pressure_stiffness``)
    "tissue_mobility": (0.0, 120.0, "log"),
    "packing_fraction": (0.6, 0.82, "lin"),
    # oxygen thresholds (mmHg): ramps need start > full, so the ranges do not overlap
    "o2_proliferation_threshold": (0.0, 20.0, "lin"),
    "o2_reference": (50.0, 200.0, "lin"),
    "o2_proliferation_shape": (0.01, 1.0, "log"),
    "o2_hypoxic_threshold": (8.0, 30.0, "lin"),
    "o2_hypoxic_saturation": (0.5, 7.0, "lin"),
    "o2_necrosis_threshold": (3.0, 10.0, "lin"),
    "o2_necrosis_max": (0.0, 2.9, "lin"),
    "blood_o2": (0.5, 100.0, "lin"),
    "rt_oer_k": (0.5, 10.0, "lin"),
    "rt_oer": (1.0, 5.0, "lin"),
    # relative levels and ratios that may exceed 1 or be 0
    "pdl1_tumor": (0.0, 5.0, "lin"),
    "pdl1_csc": (0.0, 10.0, "lin"),
    "pdl1_hif": (0.0, 5.0, "lin"),
    "csc_efflux": (0.0, 100.0, "lin"),
    "chemo_lethality": (0.0, 30.0, "log"),
    "rt_csc_resistance": (0.0, 1.0, "logit"),
}
SHARES = ("mixture_flow", "apoptotic_remains", "chemo_delayed", "damaged_volume", "o2_uptake_stroma", "o2_uptake_immune", "progenitor_terminal", "self_renewal_base", "self_renewal_max", "self_renewal_hif",
          "self_renewal_il6", "self_renewal_cxcl12", "self_renewal_lactate", "csc_survival_il6",
          "csc_survival_lactate", "pathway_inhibitor_max", "exosome_inhibitor_max",
          "anti_pd1_max", "ferroptosis_bulk", "car_t_bulk")
RATE_UNITS = ("1/min", "nM/min", "mmHg/min", "um^2/min", "1/Gy", "1/Gy^2")


def _default_bounds(name: str, value: float, unit: str) -> tuple[float, float, str]:
    """Shares: [0, 1], logit. Levels whose default is 0 (plasma): [0, 1e5] nM, lin.
    Rates: 0 (the process switched off) to 10 times the default, log. Constants
    that divide (half-saturation levels): a tenth to 10 times the default, log."""
    if name in SHARES:
        return 0.0, 1.0, "logit"
    if value == 0.0:
        return 0.0, 1e5, "lin"
    if unit in RATE_UNITS:
        return 0.0, value * 10.0, "log"
    return value / 10.0, value * 10.0, "log"


PARAMETERS: tuple[Parameter, ...] = tuple(
    Parameter(*row, *_BOUNDS.get(row[0], _default_bounds(row[0], row[1], row[2]))) for row in _ROWS)
_names = [p.name for p in PARAMETERS]
assert len(set(_names)) == len(_names), "duplicate parameter names"
assert set(_BOUNDS) <= set(_names), set(_BOUNDS) - set(_names)
for _q in PARAMETERS:
    assert _q.lower <= _q.value <= _q.upper, _q.name


# --------------------------------------------------------------------------
# domains: the values a parameter can take at all, by its meaning and unit (the bounds
# above are the narrower range a run is built for, and may be widened within these)
DIFFUSION_MAX = 1e6  # um²/min (1.7e-4 cm²/s): above any solute's diffusion coefficient in
# water at 37 °C (oxygen 3e-5 cm²/s = 1.8e5 um²/min; the smallest ions about 1e-4 cm²/s)


class Domain(NamedTuple):
    """The values a quantity can take: lower and upper limit, each open or closed, and why."""

    lower: float
    upper: float
    lower_open: bool = False
    upper_open: bool = False
    why: str = ""

    def __contains__(self, v) -> bool:
        return (math.isfinite(v) and (v > self.lower if self.lower_open else v >= self.lower)
                and (v < self.upper if self.upper_open else v <= self.upper))

    @property
    def text(self) -> str:
        lo = f"> {self.lower:g}" if self.lower_open else f">= {self.lower:g}"
        if self.upper == math.inf:
            return lo
        if self.lower == 0.0 and self.upper == 1.0 and not (self.lower_open or self.upper_open):
            return "between 0 and 1"
        return f"{lo} and {'<' if self.upper_open else '<='} {self.upper:g}"


# Shares, probabilities and volume fractions: [0, 1]. The uptake ratios of stromal and
# immune cells are ratios by meaning, but the oxygen loss bound that sizes the plan
# (``_model._oxygen_uptake_bound``) assumes no cell respires more than a tumour cell.
FRACTIONS = ("progenitor_terminal", "apoptotic_remains", "chemo_delayed", "damaged_volume", "self_renewal_base", "self_renewal_max", "self_renewal_hif",
             "self_renewal_il6", "self_renewal_cxcl12", "self_renewal_lactate",
             "csc_survival_il6", "csc_survival_lactate", "pathway_inhibitor_max",
             "exosome_inhibitor_max", "anti_pd1_max", "mixture_flow", "vessel_seed",
             "o2_uptake_stroma", "o2_uptake_immune")
# Relative levels and ratios (unit 1) that may exceed 1: >= 0.
RATIOS = ("pdl1_tumor", "pdl1_csc", "pdl1_hif", "csc_efflux", "chemo_lethality",
          "ferroptosis_bulk", "car_t_bulk", "rt_csc_resistance")
# Quantities that divide: the half-saturation constants (*_k), the oxygen reference of
# the division ramp, the shape of the oxygen factor, the unstirred layer's thickness.
POSITIVES = ("o2_reference", "o2_proliferation_shape", "medium_unstirred_layer")
# Ramps from a start to a full level: the start must lie above (the ramp divides by the gap).
ORDERED = (("o2_reference", "o2_proliferation_threshold"),
           ("o2_hypoxic_threshold", "o2_hypoxic_saturation"),
           ("o2_necrosis_threshold", "o2_necrosis_max"))
_SPECIAL = {
    "packing_fraction": Domain(0.0, 1.0, True, True, "a volume fraction; the crowding pressure "
                               "divides by it and by 1 - it"),
    "vessel_max": Domain(0.0, 1.0, True, False, "a volume fraction; vessel growth divides by it"),
    "treg_k": Domain(0.0, 1.0, True, False, "a volume fraction that divides"),
    "rt_oer": Domain(1.0, math.inf, False, False, "an oxygen enhancement ratio: oxygen "
                     "sensitises, so at least 1"),
}


def _domain(q: Parameter) -> Domain:
    if q.name in _SPECIAL:
        return _SPECIAL[q.name]
    if q.name in ("o2_uptake_stroma", "o2_uptake_immune"):
        return Domain(0.0, 1.0, why="uptake relative to a tumour cell's, at most 1: the "
                      "oxygen loss bound that sizes the plan assumes it")
    if q.name in FRACTIONS:
        return Domain(0.0, 1.0, why="a share, probability or volume fraction")
    if q.name.endswith("_k") or q.name in POSITIVES:
        return Domain(0.0, math.inf, True, why=f"a constant that divides ({q.unit})")
    if q.unit == "um^2/min":
        return Domain(0.0, DIFFUSION_MAX, why="a mobility (um^2/min), at most a fast "
                      "molecule's diffusion coefficient in water")
    if q.unit in RATE_UNITS:
        return Domain(0.0, math.inf, why=f"a rate or coefficient ({q.unit})")
    if q.unit in ("mmHg", "nM"):
        return Domain(0.0, math.inf, why=f"a level ({q.unit})")
    assert q.name in RATIOS, f"parameter {q.name} ({q.unit}): classify its domain"
    return Domain(0.0, math.inf, why="a relative level or ratio")


DOMAINS: dict[str, Domain] = {q.name: _domain(q) for q in PARAMETERS}
_MEANING = {q.name: q.meaning for q in PARAMETERS}
for _q in PARAMETERS:
    assert _q.value in DOMAINS[_q.name], _q.name
    assert _q.lower in DOMAINS[_q.name] and (
        _q.upper in DOMAINS[_q.name] or _q.upper == math.inf), _q.name
assert set(FRACTIONS + RATIOS + POSITIVES + tuple(_SPECIAL)) <= set(_names)


def domain_error(path: str, value) -> str | None:
    """Why ``value`` cannot be the value at ``path`` (a parameter name, 'diffusion.X' or
    'decay.X'), or None when it can (whatever the bounds the run is built for)."""
    group, key = _split(path)
    if group == "params" and key in DOMAINS:
        d = DOMAINS[key]
        if value not in d:
            return (f"expected a value {d.text} ({d.why}; {key}: {_MEANING[key]}), "
                    f"got {value!r}")
    elif group == "diffusion" and not 0.0 <= value <= DIFFUSION_MAX:
        return (f"expected a non-negative diffusion coefficient of at most {DIFFUSION_MAX:g} "
                f"um^2/min (faster than any solute diffuses in water; oxygen's is about 1e5), "
                f"got {value!r}")
    elif group == "decay" and not 0.0 <= value < math.inf:
        return f"expected a decay rate (1/min) >= 0, got {value!r}"
    return None


def order_error(values: dict) -> str | None:
    """A ramp whose start does not lie above its full level (``ORDERED``), or None."""
    for high, low in ORDERED:
        if not values[high] > values[low]:
            return (f"expected {high} > {low} (the ramp between them divides by the gap), "
                    f"got {values[high]:g} and {values[low]:g}")
    return None


# Parameter sets per cell line: {name: (values that differ from the defaults, source)}.
# A scenario names one (``cell_line = "wm793b"``); its own [parameters] override it.
# Browning et al. 2021 (eLife 10:e73020; docs/data/browning2021_incucyte_outer_radius.csv,
# 5000 cells seeded) measured the median outer radius of both melanoma lines: the
# spheroid volume grew at 0.250/day (WM983b) and 0.099/day (WM793b) over days 3-6.
# Only that ratio is taken from the data (division rates of WM793b scaled by
# 0.099/0.250 = 0.40); every other value is the default. Not a fit: calibration's job.
_GROWTH_RATIO_WM793B = 0.099 / 0.250
CELL_LINES = {
    "wm983b": ({}, "Browning et al. 2021 WM983b melanoma: the default parameters"),
    "wm793b": ({"tumor_division_rate": 0.00072 * _GROWTH_RATIO_WM793B,
                "csc_division_rate": 0.00036 * _GROWTH_RATIO_WM793B},
               "Browning et al. 2021 WM793b melanoma: division rates 0.40 of WM983b's, the "
               "ratio of the lines' measured spheroid volume growth over days 3-6"),
}


def default_parameters(dtype=jnp.float32, **overrides) -> dict:
    """The parameter pytree: {name: scalar array}; ``overrides`` replace values by name."""
    unknown = set(overrides) - set(_names)
    if unknown:
        raise KeyError(f"unknown model parameter(s) {sorted(unknown)}")
    return {p.name: jnp.asarray(overrides.get(p.name, p.value), dtype) for p in PARAMETERS}


# --------------------------------------------------------------------------
# values: the float pytree a run reads, addressed by path
GROUPS = ("diffusion", "decay", "medium", "initial")


def _split(path: str) -> tuple[str, str]:
    """'o2_uptake' -> ('params', 'o2_uptake'); 'diffusion.oxygen' -> ('diffusion', 'oxygen')."""
    group, _, key = path.rpartition(".")
    return (group or "params"), key


def get_value(values: dict, path: str):
    """The leaf at ``path``: a parameter name ('o2_uptake') or 'group.name' with group one of
    diffusion, decay, medium, initial ('diffusion.oxygen', 'initial.radius_um')."""
    group, key = _split(path)
    try:
        return values[group][key]
    except KeyError:
        raise KeyError(f"no value {path!r}; values are {', '.join(value_paths(values))}") from None


def set_values(values: dict, changes: dict) -> dict:
    """A copy of ``values`` with ``changes`` ({path: value}) applied; works on traced values.

    The leaf keeps its dtype, so a Python float does not change the pytree's types.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for path, value in changes.items():
        old = get_value(values, path)
        group, key = _split(path)
        out[group][key] = jnp.asarray(value, jnp.result_type(old))
    return out


def value_paths(values: dict) -> tuple[str, ...]:
    """Every bounded value's path: the parameters, then diffusion, decay, medium, initial."""
    out = list(values.get("params", {}))
    for group in GROUPS:
        out += [f"{group}.{k}" for k in values.get(group, {})]
    return tuple(out)


@dataclass(frozen=True)
class Bounds:
    """Lower and upper bound and natural scale of every value, by path (static, hashable).

    The time-stepping plan is sized from the upper (and some lower) bounds,
    so every set of values within them runs on one compiled program;
    ``check_bounds`` refuses values outside them. ``Bounds.default`` holds the
    parameter table's rows and the transport values' bounds
    (``_model.transport_bounds``); geometry builders add the medium and the
    initial state's, and ``override`` widens or narrows any of them.
    """

    entries: tuple[tuple[str, float, float, str], ...]
    _index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "entries", tuple(sorted(self.entries)))
        object.__setattr__(self, "_index", {e[0]: e[1:] for e in self.entries})

    @classmethod
    def default(cls, extra: dict | None = None) -> Bounds:
        from ._model import transport_bounds

        table = {q.name: (q.lower, q.upper, q.scale) for q in PARAMETERS}
        merged = table | transport_bounds() | (extra or {})
        return cls(tuple((k, float(lo), float(hi), sc) for k, (lo, hi, sc) in merged.items()))

    def __contains__(self, path: str) -> bool:
        return path in self._index

    def get(self, path: str) -> tuple[float, float, str]:
        try:
            return self._index[path]
        except KeyError:
            close = difflib.get_close_matches(path, list(self._index), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"no bounds for {path!r}{hint}") from None

    def lower(self, path: str) -> float:
        return self.get(path)[0]

    def upper(self, path: str) -> float:
        return self.get(path)[1]

    def override(self, changes: dict) -> Bounds:
        """New bounds with ``changes`` ({path: (lower, upper)}) applied; the scale stays."""
        merged = dict(self._index)
        for path, pair in changes.items():
            lo, hi = (float(x) for x in pair)
            _, _, scale = self.get(path)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"bounds of {path!r}: expected finite lower <= upper, "
                                 f"got [{lo:g}, {hi:g}]")
            for v in (lo, hi):
                why = domain_error(path, v)
                if why is not None:
                    raise ValueError(f"bounds of {path!r}: {why}")
            merged[path] = (lo, hi, scale)
        return Bounds(tuple((k, *v) for k, v in merged.items()))


def check_bounds(values: dict, bounds: Bounds, where: str = "values") -> None:
    """Refuse (ValueError) values outside their bounds, naming each path, value and bounds.

    Traced values (inside jit or grad) are not checked here; the solve loop
    flags them in its status instead (``Status.OUT_OF_BOUNDS``).
    """
    bad = []
    for path in value_paths(values):
        if path not in bounds:
            continue
        leaf = get_value(values, path)
        if isinstance(leaf, jax.core.Tracer):
            continue
        v = np.asarray(leaf, dtype=float)
        lo, hi, _ = bounds.get(path)
        outside = ~((v >= lo) & (v <= hi))
        if outside.any():
            shown = v[outside].ravel()[0]
            bad.append(f"{path} = {shown:g} (bounds [{lo:g}, {hi:g}])")
    if bad:
        raise ValueError(f"{where}: outside the bounds the run was built for: "
                         + "; ".join(bad) + ". Widen them (scenario [bounds] table, or the "
                         "bounds argument of organoid/tissue): the plan is sized from them")


def within_bounds(values: dict, bounds: Bounds):
    """Traced: True when every bounded value lies within its bounds."""
    ok = jnp.asarray(True)
    for path in value_paths(values):
        if path in bounds:
            lo, hi, _ = bounds.get(path)
            v = get_value(values, path)
            ok = ok & (v >= lo) & (v <= hi)
    return ok
