"""Conservative upwind finite-volume transport of cell densities.

Cells of each population ρ (volume fraction, F channels) move by random
motility μ (um²/min) and by a drift velocity v = −∇Φ (um/min), where the
potential Φ (um²/min) sums whatever drives them: chemotaxis (Φ = −χ·S) and a
pressure or crowding push (Φ = κ·p). Across each face between voxels i and
i+1 the net transfer (volume fraction per minute) is

    T = (μ/h² + v⁺/h)·ρ_i·room_{i+1} − (μ/h² + v⁻/h)·ρ_{i+1}·room_i,

with v⁺ = max(v, 0), v⁻ = max(−v, 0) taken at the face (upwinding), |v|
capped at ``max_speed`` (a saturating drift, which makes the step limit
static whatever the potential), and
room = 1 − total cell fraction (volume filling; room ≡ 1 gives plain
diffusion plus upwind advection). Then ∂ρ_i/∂t = T_{i−1/2} − T_{i+1/2}.

Properties, all tested:
- conservative: Σ_i ∂ρ_i/∂t = 0 to round-off with no-flux or periodic faces;
- positive: a voxel loses at most its own content, so forward Euler keeps
  ρ ≥ 0 for dt ≤ ``transport_limit``;
- volume bound: nothing enters a voxel with no room, so Σ ρ ≤ 1 is kept
  under the same step limit (single species: exactly linear diffusion, the
  continuum limit of the simple exclusion process).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._diffusion import _per_channel, _slice

Array = jax.Array


def _zeros_face(x: Array, axis: int) -> Array:
    return jnp.zeros_like(_slice(x, 0, 1, axis))


def _face_rates(phi_lo, phi_hi, mu_lo, mu_hi, h, max_speed):
    """At each face: the drift velocity before and after the cap (None without a
    potential), and the rates per unit content forward (lo to hi) and backward."""
    hop = fwd = bwd = 0.5 * (mu_lo + mu_hi) / h**2
    v = vc = None
    if phi_lo is not None:
        v = -sum(hi - lo for lo, hi in zip(phi_lo, phi_hi)) / h
        vc = v if max_speed is None else jnp.clip(v, -max_speed, max_speed)
        fwd = hop + jnp.maximum(vc, 0.0) / h
        bwd = hop + jnp.maximum(-vc, 0.0) / h
    return v, vc, fwd, bwd


def face_transfer(r_lo, r_hi, phi_lo, phi_hi, room_lo, room_hi, mu_lo, mu_hi, psi_lo, psi_hi,
                  h: float, max_speed: float | None = None):
    """Net transfer T (volume fraction per minute of a cube of side h) across one face.

    The face flux of the module docstring divided by h: T·h is the flux per
    unit area (um/min), so a finite volume of volume V behind a face of area A
    gains T·h·A/V (``radial_cell_transport_rate``). phi_lo, phi_hi: tuples of
    the potential's parts on the two sides, or None (no drift); psi_lo, psi_hi:
    the carrier Ψ, or None.
    """
    _, v, fwd, bwd = _face_rates(phi_lo, phi_hi, mu_lo, mu_hi, h, max_speed)
    v = 0.0 if v is None else v
    out = fwd * r_lo * room_hi - bwd * r_hi * room_lo
    if psi_lo is not None:
        u = -(psi_hi - psi_lo) / h
        if max_speed is not None:
            left = max_speed - jnp.abs(v)
            u = jnp.clip(u, -left, left)
        out = out + (jnp.maximum(u, 0.0) * r_lo - jnp.maximum(-u, 0.0) * r_hi) / h
    return out


def cell_transport_rate(
    rho: Array,
    spacing: tuple[float, float, float],
    motility: Array,
    potential: Array | None = None,
    room: Array | None = None,
    periodic: tuple[bool, bool, bool] = (False, False, False),
    max_speed: float | None = None,
    carrier: Array | None = None,
) -> Array:
    """∂ρ/∂t of the volume-filling upwind scheme described in the module docstring.

    rho:       (F, X, Y, Z) volume fractions.
    spacing:   voxel size (hx, hy, hz) in um.
    motility:  μ in um²/min, shape (F,).
    potential: Φ in um²/min, broadcastable to rho (e.g. (F, X, Y, Z) or
               (X, Y, Z)), or a tuple of such, summed; v = −∇Φ. None: no
               drift. Pass the parts of a sum as a tuple: differenced apart
               at each face, XLA fuses them into the pass; a sum formed
               beforehand made the pass 3 times slower (measured, 64³ × 12).
    room:      (X, Y, Z) free volume fraction, or None (no exclusion).
    periodic:  per axis; non-periodic faces are no-flux for cells.
    max_speed: cap on |v| (um/min), or None (no cap). With a cap, forward Euler
               stays positive for dt ≤ ``transport_limit(spacing, μ, max_speed)``.
    motility may also be (F, X, Y, Z) (e.g. slowed by matrix); the face value
    is the mean of its two voxels. Inside a loop of passes, give it as (F, X,
    Y, Z), spread before the loop: a (F,) motility broadcast inside the fused
    pass ran 5 times slower on XLA's CPU code (70 against 14 ms a pass at 64³ ×
    13 populations, measured; ``Stepper`` spreads it once a step).
    carrier:   Ψ (X, Y, Z) in um²/min, or None: every population also moves with
               the bulk velocity u = −∇Ψ, upwind and not limited by room
               (T += (u⁺·ρ_i − u⁻·ρ_{i+1})/h): the motion of the whole mixture,
               which carries packed tissue as well as loose cells. With a cap,
               |u| ≤ max_speed − |v| at each face, so the step limit holds.
    """
    nd = rho.ndim
    mu = _per_channel(motility, nd)
    if potential is not None:
        parts = potential if isinstance(potential, (tuple, list)) else (potential,)
        # an (X, Y, Z) part broadcasts over the channels
        potential = tuple(x[None] if jnp.ndim(x) == nd - 1 else x for x in parts)
    return _transport(rho, tuple(spacing), mu, potential, room, tuple(periodic), max_speed,
                      carrier)


def _rate(rho, spacing, mu, potential, room, periodic, max_speed, carrier):
    """``cell_transport_rate`` on its normalised arguments (mu 4-D, potential a tuple)."""
    rate = jnp.zeros_like(rho)
    for axis in range(3):
        ax = axis + 1
        h = spacing[axis]
        n = rho.shape[ax]
        if n == 1:
            continue  # no face inside; a periodic wrap would join the voxel to itself

        transfer = partial(face_transfer, h=h, max_speed=max_speed)

        def cut(x, start, stop, ax=ax):
            if x is None:
                return None
            if isinstance(x, tuple):
                return tuple(cut(y, start, stop) for y in x)
            return _slice(x, start, stop, ax) if x.shape[ax] > 1 else x

        rm = 1.0 if room is None else jnp.broadcast_to(room, rho.shape[1:])[None]
        psi = None if carrier is None else jnp.broadcast_to(carrier, rho.shape[1:])[None]
        room_of = (lambda a, b: 1.0) if room is None else (lambda a, b, rm=rm: cut(rm, a, b))
        t = transfer(
            cut(rho, 0, n - 1),
            cut(rho, 1, n),
            cut(potential, 0, n - 1),
            cut(potential, 1, n),
            room_of(0, n - 1),
            room_of(1, n),
            cut(mu, 0, n - 1),
            cut(mu, 1, n),
            cut(psi, 0, n - 1),
            cut(psi, 1, n),
        )
        if periodic[axis]:
            edge = transfer(
                cut(rho, n - 1, n),
                cut(rho, 0, 1),
                cut(potential, n - 1, n),
                cut(potential, 0, 1),
                room_of(n - 1, n),
                room_of(0, 1),
                cut(mu, n - 1, n),
                cut(mu, 0, 1),
                cut(psi, n - 1, n),
                cut(psi, 0, 1),
            )
            lo_face = hi_face = edge
        else:
            lo_face = hi_face = _zeros_face(rho, ax)
        rate = (rate + jnp.concatenate([lo_face, t], axis=ax)
                - jnp.concatenate([t, hi_face], axis=ax))
    return rate


# Reverse mode by hand. JAX's transpose of the pass above (slices, concatenations,
# clips) compiled to 78 loops where the pass itself is one, and ran 10 times its time
# (32³ × 13 populations, 2-core CPU). The rule below writes each input's pullback voxel by
# voxel, from the voxel's own inputs and its neighbours' (``_voxel_pullbacks``), and runs
# it one population at a time: XLA still stores the rule's intermediates (about 60 loops),
# but at one population's size they stay in cache. Measured at 32³ × 13 with the fit
# running on both cores: 34 ms against 104 for the previous rule (faces of all populations
# at once, 49 loops), in one run (issue 10). Only the inputs are kept for the reverse pass. It
# takes JAX's slopes at ties, so it equals autodiff of the pass.

def _up(x):
    """d max(x, 0)/dx as JAX takes it: 1 above 0, 1/2 at 0 (a tie), 0 below."""
    return jnp.where(x > 0, 1.0, jnp.where(x == 0, 0.5, 0.0)).astype(x.dtype)


def _below(a, b):
    """d min(a, b)/da as JAX takes it: 1 where a < b, 1/2 at a tie, 0 above."""
    return jnp.where(a < b, 1.0, jnp.where(a == b, 0.5, 0.0)).astype(jnp.result_type(a, b))


def _face_pullback(g, r_lo, r_hi, phi_lo, phi_hi, room_lo, room_hi, mu_lo, mu_hi, psi_lo,
                   psi_hi, h, max_speed):
    """Cotangents of ``face_transfer``'s inputs for the cotangent g of its transfer T:
    (r_lo, r_hi, the drift velocity v, room_lo, room_hi, the hop rate, the carrier's
    velocity u); None where an input is absent."""
    v, vc, fwd, bwd = _face_rates(phi_lo, phi_hi, mu_lo, mu_hi, h, max_speed)
    d_lo = g * fwd * room_hi
    d_hi = -g * bwd * room_lo
    d_room_hi = g * fwd * r_lo
    d_room_lo = -g * bwd * r_hi
    d_hop = g * (r_lo * room_hi - r_hi * room_lo)
    d_vc = None if v is None else g * (_up(vc) * r_lo * room_hi + _up(-vc) * r_hi * room_lo) / h
    d_u = None
    if psi_lo is not None:
        u = -(psi_hi - psi_lo) / h
        uc = u
        if max_speed is not None:
            left = max_speed - jnp.abs(0.0 if vc is None else vc)
            m1 = jnp.maximum(u, -left)
            uc = jnp.minimum(m1, left)
        d_lo = d_lo + g * jnp.maximum(uc, 0.0) / h
        d_hi = d_hi - g * jnp.maximum(-uc, 0.0) / h
        d_uc = g * (_up(uc) * r_lo + _up(-uc) * r_hi) / h
        d_u = d_uc
        if max_speed is not None:
            # uc = min(m1, left), m1 = max(u, -left)
            a_m1, a_left = _below(m1, left), _below(left, m1)
            b_u, b_left = _below(-left, u), _below(u, -left)
            d_u = d_uc * a_m1 * b_u
            if vc is not None:
                d_left = d_uc * (a_left - a_m1 * b_left)
                # d|vc|/dvc as JAX takes it: +1 at 0
                d_vc = d_vc - d_left * jnp.where(vc >= 0, 1.0, -1.0).astype(vc.dtype)
    d_v = d_vc
    if v is not None and max_speed is not None:
        # vc = min(max(v, -M), M)
        m = jnp.maximum(v, -max_speed)
        d_v = d_vc * _below(-max_speed, v) * _below(m, max_speed)
    return d_lo, d_hi, d_v, d_room_lo, d_room_hi, d_hop, d_u


def _unbroadcast(x, shape):
    """Sum x over the axes along which an input of ``shape`` was broadcast to it."""
    lead = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, x.shape)) if a == 1 and b != 1)
    return (jnp.sum(x, axis=axes, keepdims=True) if axes else x).reshape(shape)


@partial(jax.custom_vjp, nondiff_argnums=(1, 5, 6))
def _transport(rho, spacing, mu, potential, room, periodic, max_speed, carrier):
    return _rate(rho, spacing, mu, potential, room, periodic, max_speed, carrier)


def _transport_fwd(rho, spacing, mu, potential, room, periodic, max_speed, carrier):
    out = _rate(rho, spacing, mu, potential, room, periodic, max_speed, carrier)
    return out, (rho, mu, potential, room, carrier)


def _shift(x, k, ax, periodic):
    """x at voxel i + k (k = ±1) along ``ax``: wrapped round if periodic, else 0 past the
    edge; None, a tuple or a number pass through."""
    if x is None or isinstance(x, float):
        return x
    if isinstance(x, tuple):
        return tuple(_shift(y, k, ax, periodic) for y in x)
    if periodic:
        return jnp.roll(x, -k, axis=ax)
    cfg = [(0, 0, 0)] * x.ndim
    cfg[ax] = (-1, 1, 0) if k > 0 else (1, -1, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _edge_mask(x, k, ax, periodic):
    """1 where voxel i + k exists along ``ax`` (always, if periodic), else 0."""
    if periodic:
        return 1.0
    shape = [1] * x.ndim
    shape[ax] = x.shape[ax]
    i = jax.lax.broadcasted_iota(jnp.int32, shape, ax)
    return (i < x.shape[ax] - 1 if k > 0 else i > 0).astype(x.dtype)


def _voxel_pullbacks(g, rho, mu, pots, rm, psi, spacing, periodic, max_speed):
    """Cotangents, per channel and voxel, of rho, the hop rate μ, the drift velocity's
    potential, room and carrier (the last three before summing over what they were
    broadcast along), for the cotangent g of the rate. All arrays (C, X, Y, Z) but rm
    and psi (1, X, Y, Z) or absent (1.0 and None)."""
    d_rho = d_mu = d_v = d_room = d_psi = 0.0
    # Voxel by voxel: each pullback is an expression of the inputs and cotangents at the
    # voxel and its two neighbours on each axis (the faces above and below it).
    for axis in range(3):
        ax = axis + 1
        h = spacing[axis]
        if rho.shape[ax] == 1:
            continue
        args = (rho, pots, rm, mu, psi)
        up = tuple(_shift(x, 1, ax, periodic[axis]) for x in (g,) + args)
        dn = tuple(_shift(x, -1, ax, periodic[axis]) for x in (g,) + args)

        def pull(gf, lo, hi):
            return _face_pullback(gf, lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], lo[3], hi[3],
                                  lo[4], hi[4], h, max_speed)

        # the face between the voxel and the next, and between the previous and the voxel
        above = pull((up[0] - g) * _edge_mask(g, 1, ax, periodic[axis]), args, up[1:])
        below = pull((g - dn[0]) * _edge_mask(g, -1, ax, periodic[axis]), dn[1:], args)
        d_rho = d_rho + above[0] + below[1]
        d_mu = d_mu + (above[5] + below[5]) * (0.5 / h**2)
        if pots is not None:
            d_v = d_v + (above[2] - below[2]) * (1.0 / h)
        if psi is not None:
            d_psi = d_psi + (above[6] - below[6]) * (1.0 / h)
        if not isinstance(rm, float):
            d_room = d_room + above[3] + below[4]
    zero = jnp.zeros(rho.shape, rho.dtype)  # every axis of one voxel: no face at all
    return tuple(x + zero for x in (d_rho, d_mu, d_v, d_room, d_psi))


def _transport_bwd(spacing, periodic, max_speed, res, g):
    rho, mu, potential, room, carrier = res
    space = rho.shape[1:]

    def spread(x):  # broadcast over space (keeping a channel axis of 1 or F)
        return jnp.broadcast_to(x, x.shape[:1] + space)

    rm = 1.0 if room is None else jnp.broadcast_to(room, space)[None]
    psi = None if carrier is None else jnp.broadcast_to(carrier, space)[None]
    pots = () if potential is None else tuple(spread(x) for x in potential)

    # One channel at a time: the pullbacks' intermediates (which XLA stores rather than
    # fusing, about 60 arrays) are then the size of one channel's grid, and stay in cache.
    def channel(_, xs):
        g_c, rho_c, mu_c, pots_c = xs
        parts = tuple(q if p is None else p[None] for p, q in zip(pots_c, pots))
        return None, _voxel_pullbacks(g_c[None], rho_c[None], mu_c[None], parts or None, rm,
                                      psi, spacing, periodic, max_speed)

    own = tuple(jnp.broadcast_to(p, rho.shape) if p.shape[0] > 1 else None for p in pots)
    _, out = jax.lax.scan(channel, None, (g, rho, spread(mu), own))
    d_rho, d_mu, d_v, d_room, d_psi = (x[:, 0] for x in out)
    out_pot = None if potential is None else tuple(
        _unbroadcast(d_v, x.shape).astype(x.dtype) for x in potential)
    out_room = None if room is None else _unbroadcast(d_room, jnp.shape(room)).astype(
        jnp.result_type(room))
    out_carrier = None if carrier is None else _unbroadcast(
        d_psi, jnp.shape(carrier)).astype(jnp.result_type(carrier))
    return (d_rho, _unbroadcast(d_mu, mu.shape).astype(mu.dtype), out_pot, out_room,
            out_carrier)


_transport.defvjp(_transport_fwd, _transport_bwd)


def transport_limit(spacing, motility: float, max_speed: float = 0.0,
                    pressure_stiffness: float = 0.0) -> float:
    """Largest forward-Euler step (min) that keeps ρ ≥ 0 and Σρ ≤ 1, and is stable.

    A voxel sends out at most Σ_faces (μ/h² + |v|/h) of its content per minute
    (positivity: dt times that ≤ 1). A drift potential that depends on the
    densities themselves, Φ(φ) with |dΦ/dφ| ≤ K (a crowding pressure), gives
    the linearised step a rate of at most Σ_faces K/h² (a voxel just past
    packing with empty neighbours on every face); forward Euler is stable for
    dt times that ≤ 2, so K/h² enters once per axis where μ/h² enters twice.
    """
    return 1.0 / sum(2.0 * motility / h**2 + 2.0 * max_speed / h + pressure_stiffness / h**2
                     for h in spacing)
