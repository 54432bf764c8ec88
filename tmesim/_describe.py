"""``tmesim model``: the whole niche model as text or Markdown."""

from __future__ import annotations

from ._grid import FACES, Dirichlet, Neumann, Periodic
from ._model import (
    DEFAULT_DECAY,
    DEFAULT_DIFFUSION,
    FIELD_GROUP,
    HELPERS,
    ORGANOID_MEDIUM_O2,
    PROCESSES,
    niche_species,
)
from ._observables import OBSERVABLES
from ._parameters import PARAMETERS, Bounds

def _boundary_text(faces, medium: float) -> str:
    def one(b):
        if isinstance(b, Dirichlet):
            return f"medium level ({medium:g} at start)"
        if isinstance(b, Periodic):
            return "periodic"
        return "no-flux" if isinstance(b, Neumann) and not b.flux else f"flux {b.flux:g}"

    texts = [one(b) for b in faces]
    if len(set(texts)) == 1:
        return texts[0]
    return ", ".join(f"{f} {t}" for f, t in zip(FACES, texts))


def _doc(name: str) -> str:
    from . import _model

    return (getattr(_model, name).__doc__ or "").strip()


def describe_model(geometry: str = "organoid", markdown: bool = False) -> str:
    """The whole model as text: fields, processes with their terms and parameters, mechanisms."""
    from ._grid import Grid

    if geometry not in ("organoid", "tissue"):
        raise ValueError(f"geometry must be 'organoid' or 'tissue', got {geometry!r}")
    faces = (Neumann(), Dirichlet(0.0)) * 3 if geometry == "organoid" else (Neumann(),) * 6
    table = niche_species(faces if geometry == "organoid" else None)
    bounds = table.boundaries(Grid((4, 4, 4), 20.0, faces))
    limits = Bounds.default()
    lines = []

    def head(text):
        lines.extend(["", f"## {text}" if markdown else text.upper(), ""])

    lines.append("# The tmesim CSC-niche model" if markdown else "THE TMESIM CSC-NICHE MODEL")
    lines.append("")
    lines.append(f"Geometry: {geometry} ("
                 + ("organoid in medium: x-, y-, z- are mirror planes of the simulated octant, "
                    "x+, y+, z+ the medium; the medium is well mixed at its level beyond an "
                    "unstirred layer around the organoid (medium_exchange)" if geometry == "organoid"
                    else "tissue block: vessels inside as sources, no-flux faces") + ").")
    lines.append("Units: um, min, mmHg (oxygen), nM (other solutes), volume fraction (cells, "
                 "vessels), relative density (ECM, 1 = dense stroma). Bounds in brackets: the "
                 "range a run or fit may use (the time-stepping plan is sized from them).")
    head(f"Fields ({len(table)})")
    if markdown:
        lines.append("| field | group | kind | units | D (um²/min) | decay (1/min) | boundary | source |")
        lines.append("|---|---|---|---|---|---|---|---|")
    for s, faces_of in zip(table, bounds):
        medium = ORGANOID_MEDIUM_O2 if s.name == "oxygen" else 0.0
        bc = _boundary_text(faces_of, medium) if s.kind == "solute" else "no-flux (does not cross)"
        D = DEFAULT_DIFFUSION.get(s.name, 0.0)
        decay = DEFAULT_DECAY.get(s.name, 0.0)
        d_text = f"{D:g}"
        if f"diffusion.{s.name}" in limits:
            lo, hi, _ = limits.get(f"diffusion.{s.name}")
            d_text += f" [{lo:g}, {hi:g}]"
        row = (s.name, FIELD_GROUP[s.name], s.kind, s.units, d_text, f"{decay:g}", bc, s.source)
        if markdown:
            lines.append("| " + " | ".join(row) + " |")
        else:
            lines.append(f"  {s.name:<20} {s.kind:<7} {s.units:<16} D {d_text:<18} "
                         f"decay {decay:<6g} {bc}")
            lines.append(f"  {'':<20} source: {s.source}")
    by_process: dict = {}
    for q in PARAMETERS:
        by_process.setdefault(q.process, []).append(q)
    entries = [(pr.name, pr.mechanisms, pr.term, " (organoid only)" if pr.medium_only
                else " (tissue only)" if pr.tissue_only else "") for pr in PROCESSES]
    entries += [(name, mech, _doc(name), "") for name, mech in HELPERS.items()]
    head(f"Processes ({len(PROCESSES)}) and shared factors ({len(HELPERS)})")
    for name, mech, term, where in entries:
        tag = f"{where} [{', '.join(mech)}]" if mech else where
        lines.append(f"### {name}{tag}" if markdown else f"{name}{tag}")
        body = " ".join(term.split()) if markdown else "\n".join(
            "    " + t.strip() for t in term.splitlines())
        lines.append(body)
        if markdown:
            lines.append("")
        for q in by_process.get(name, []):
            text = (f"{q.name} = {q.value:g} {q.unit} [{q.lower:g}, {q.upper:g}, {q.scale}]: "
                    f"{q.meaning}. Source: {q.source}")
            lines.append(f"- {text}" if markdown else f"      {text}")
        lines.append("")
    head("Mechanisms")
    for m in range(1, 19):
        key = f"M{m}"
        names = [n for n, mech, *_ in entries if key in mech]
        lines.append(f"{'- ' if markdown else '  '}{key}: {', '.join(names)}")
    head(f"Observables ({len(OBSERVABLES)})")
    lines.append("Saved in run files (/observables) and by ``tmesim.observables``; each a smooth "
                 "or piecewise-linear function of the fields (docs/observables.md).")
    if markdown:
        lines.append("")
    for name, (unit, meaning) in OBSERVABLES.items():
        lines.append(f"{'- ' if markdown else '  '}{name} ({unit}): {meaning}")
    lines.append("")
    lines.append(f"{len(PARAMETERS)} parameters; calibration may differentiate any of them, and "
                 "the transport coefficients, medium levels, initial radius and CSC share "
                 "(the values pytree ``Setup.values``).")
    return "\n".join(lines)
