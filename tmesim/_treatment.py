"""Treatments as schedule arrays read inside the compiled loop.

Everything a treatment does is a pure function of the schedule values and
the integer step k, so a run needs no host round trip per dose or event, a
resumed run sees exactly what the uninterrupted one saw, and schedules are
values: conditions that differ only in doses, levels or event times batch
with ``vmap`` and share one compiled program. ``values["schedule"]``:

    dose          {start, end, level, rate, wash}: (drugs, K) arrays, times in
                  min (``drug_levels``);
    medium        {step, level}: (M,) steps and (M, solutes) levels: the medium
                  is replaced at each step (drugs washed out, new levels);
    radiotherapy  {step, dose_gy}: (R,) fractions;
    injection     {step, amount}: (E,) steps and (E, cells) volume fractions.

Steps are stored as floats (exact integers below 2^24 in float32) so that
every leaf of the values pytree is a float and ``jax.grad`` accepts the
whole tree. Unused rows are padded to multiples of 8 with inert entries
(``INERT_STEP``, level 0), so scenarios with different treatment counts up
to the same multiple share compiled code.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ._model import CELLS, DRUGS, SOLUTES

INERT_STEP = 2.0**30  # a step no run reaches (exact in float32)
PAD = 8


def drug_levels(dose: dict, t):
    """Plasma and medium drug levels (DRUGS order, nM) at time t (min).

    Each dose i gives level_i · exp(−k_i · max(t − end_i, 0)) for
    start_i ≤ t < wash_i: a bolus (end = start) or an infusion holding the
    level until end, then first-order clearance k = ln 2 / half-life; a medium
    change (wash) removes it. Levels of overlapping doses add.
    """
    t = jnp.asarray(t, dose["level"].dtype)
    on = (t >= dose["start"]) & (t < dose["wash"])
    since_end = jnp.maximum(t - dose["end"], 0.0)
    return jnp.sum(jnp.where(on, dose["level"] * jnp.exp(-dose["rate"] * since_end), 0.0), axis=1)


def medium_levels(initial, medium: dict, k):
    """Medium levels (SOLUTES order) in force at step k: the newest change at or before k.

    initial: (S,) levels of the first medium; medium: {step (M,), level (M, S)}.
    """
    k = jnp.asarray(k).astype(medium["step"].dtype)
    since = medium["step"] <= k
    newest = jnp.argmax(jnp.where(since, medium["step"], -1.0))
    return jnp.where(jnp.any(since), medium["level"][newest], initial)


def events_at(schedule: dict, k):
    """(radiotherapy dose in Gy, injected amounts per cell field (CELLS order)) at step k."""
    rt, inj = schedule["radiotherapy"], schedule["injection"]
    k = jnp.asarray(k).astype(rt["step"].dtype)
    dose = jnp.sum(jnp.where(rt["step"] == k, rt["dose_gy"], 0.0))
    amount = jnp.sum(jnp.where((inj["step"] == k)[:, None], inj["amount"], 0.0), axis=0)
    return dose, amount


def inject(fields, table, amounts, site):
    """Add ``amounts`` (per cell field, volume fraction) with spatial weight ``site``.

    site: (X, Y, Z), mean 1 over where cells go in (the medium of an organoid,
    the vessels of a tissue). Added volume never exceeds the room left in a
    voxel (φ ≤ 1): where it would, every injected population is scaled down
    by the same factor.
    """
    cells = np.array([table.index(c) for c in CELLS])
    phi = jnp.sum(fields[cells], axis=0)
    add = amounts.reshape(amounts.shape + (1,) * site.ndim) * site[None]
    total = jnp.sum(add, axis=0)
    room = jnp.maximum(1.0 - phi, 0.0)
    scale = jnp.where(total > room, room / jnp.where(total > 0, total, 1.0), 1.0)
    return fields.at[cells].add(add * scale[None])


# --------------------------------------------------------------------------
# building schedules on the host
def _padded(rows: list, width: int, inert: tuple) -> np.ndarray:
    k = max(PAD, -(-len(rows) // PAD) * PAD)
    return np.array(rows + [inert] * (k - len(rows)), dtype=float).reshape(k, width)


def dose_schedule(doses) -> dict:
    """Dose arrays from (drug, start_min, end_min, level_nM, rate_per_min, wash_min) rows."""
    rows = {d: [] for d in DRUGS}
    for drug, *row in doses:
        rows[drug].append(tuple(row))
    k = max(PAD, -(-max(len(r) for r in rows.values()) // PAD) * PAD)
    inert = (math.inf, math.inf, 0.0, 0.0, math.inf)
    table = np.array([r + [inert] * (k - len(r)) for r in rows.values()])
    return {name: table[:, :, j] for j, name in enumerate(("start", "end", "level", "rate", "wash"))}


def schedule(doses=(), medium_changes=(), radiotherapy=(), injections=()) -> dict:
    """The schedule values (NumPy, float) from host-side lists.

    doses: rows as ``dose_schedule``; medium_changes: (step, {solute: level})
    with every solute's level in force after the change (earlier levels
    carried forward by the caller); radiotherapy: (step, dose_gy);
    injections: (step, {cell: amount}).
    """
    inert_cells = (INERT_STEP,) + (0.0,) * len(CELLS)
    inj = _padded([(s,) + tuple(a.get(c, 0.0) for c in CELLS) for s, a in injections],
                  1 + len(CELLS), inert_cells)
    med = _padded([(s,) + tuple(lv[n] for n in SOLUTES) for s, lv in medium_changes],
                  1 + len(SOLUTES), (INERT_STEP,) + (0.0,) * len(SOLUTES))
    rt = _padded(list(radiotherapy), 2, (INERT_STEP, 0.0))
    return {
        "dose": dose_schedule(doses),
        "medium": {"step": med[:, 0], "level": med[:, 1:]},
        "radiotherapy": {"step": rt[:, 0], "dose_gy": rt[:, 1]},
        "injection": {"step": inj[:, 0], "amount": inj[:, 1:]},
    }
