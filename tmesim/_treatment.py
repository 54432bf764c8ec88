"""Treatments: drug levels over time (pharmacokinetics), injected cells, dose events.

Drug doses enter through ``drug_levels``, a ``Stepper`` forcing evaluated at
every step from closed forms (so a run needs no host round trip per dose and
a resumed run sees exactly the same levels). Radiotherapy (``_model.radiotherapy``)
and cell injections are events applied between steps by the run loop.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._model import CELLS, DRUGS


def drug_levels(params, t, table):
    """Plasma and medium drug levels at time t (min) from ``params["dosing"]``.

    Each dose i (arrays from ``Scenario.dosing``, shape (drugs, doses)) gives
        level_i · exp(−k_i · max(t − end_i, 0))   for start_i ≤ t < wash_i,
    i.e. a bolus (end = start) or an infusion holding the level until end,
    then first-order clearance k = ln 2 / half-life; a medium change (wash)
    removes it. Levels of overlapping doses add. The sum sets
    ``plasma_<drug>`` (what vessels deliver in tissue) and the Dirichlet
    boundary value of the drug (the medium around an organoid).
    """
    dosing = params.get("dosing")
    if dosing is None:
        return params
    t = jnp.asarray(t, dosing["level"].dtype)
    on = (t >= dosing["start"]) & (t < dosing["wash"])
    since_end = jnp.maximum(t - dosing["end"], 0.0)
    level = jnp.sum(jnp.where(on, dosing["level"] * jnp.exp(-dosing["rate"] * since_end), 0.0),
                    axis=1)
    out = dict(params)
    for j, drug in enumerate(DRUGS):
        out[f"plasma_{drug}"] = level[j]
    channels = np.array([table.index(drug) for drug in DRUGS])
    out["boundary_value"] = params["boundary_value"].at[:, channels].set(level)
    return out


def dosing_params(dosing: dict, dtype) -> dict:
    """The dose arrays as a pytree leaf set (``params["dosing"]``)."""
    return {k: jnp.asarray(np.asarray(v), dtype) for k, v in dosing.items()}


def inject(fields, table, name: str, amount: float, where):
    """Add ``amount`` (volume fraction) of cells ``name`` with spatial weight ``where``
    (mean 1 over its support).

    The added volume is capped by the room left in each voxel (φ ≤ 1).
    """
    f = np.asarray(fields)
    phi = sum(f[table.index(c)] for c in CELLS)
    add = np.minimum(amount * where, np.maximum(1.0 - phi, 0.0))
    return jnp.asarray(fields).at[table.index(name)].add(jnp.asarray(add, fields.dtype))
