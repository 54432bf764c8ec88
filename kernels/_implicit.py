"""Unconditionally stable implicit diffusion: locally one-dimensional sweeps.

Each step solves, axis after axis (x, y, z), the backward-Euler system
    (1 − dt·A_axis + dt·λ/3) c* = c + dt·b_axis
where A_axis is the 1D finite-volume operator of ``diffusion_rate`` and b_axis
its boundary source. This is BioFVM's scheme (Ghaffarizadeh et al. 2016,
Bioinformatics 32:1256) with one difference that matters: Dirichlet faces
enter the matrix and right-hand side of every sweep (as the same face flux the
explicit operator uses), instead of re-pinning boundary voxels between sweeps
(BioFVM's 2.7% bias on the cosh test, as issue 2 reports it). Pinned voxels
(Dirichlet nodes) become identity rows inside each solve for the same reason.
The splitting itself still biases the steady state: decay split as λ/3 per
sweep acts as λ(1 + dtλ/3 + …) at the fixed point, 7e-4 relative on the cosh
test at dt = 0.01 (tests/test_verification.py). ``implicit_step``
(kernels/_multigrid.py) solves the unsplit system, whose fixed point is exact.

First order in time, unconditionally stable, monotone (an M-matrix per sweep).
Method "lod" of a species.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._diffusion import _closed, _per_channel

Array = jax.Array


def thomas(a: Array, b: Array, c: Array, d: Array) -> Array:
    """Solve tridiagonal systems along axis 0 by the Thomas algorithm.

    Row i reads a_i x_{i−1} + b_i x_i + c_i x_{i+1} = d_i (a_0 and c_{n−1} are
    ignored). a, b, c have shape (n, ...) broadcastable to d's (n, ...): a
    coefficient shared by many lines costs nothing extra. Every line of the
    batch advances together in one ``lax.scan`` over n; no pivoting, so the
    matrix must be diagonally dominant (diffusion matrices are).
    """
    n = d.shape[0]
    zero_first = jnp.arange(n).reshape((n,) + (1,) * (a.ndim - 1)) > 0
    a = jnp.where(zero_first, a, 0.0)
    cshape = jnp.broadcast_shapes(a.shape[1:], b.shape[1:], c.shape[1:])

    def forward(carry, row):
        cp_prev, dp_prev = carry
        ai, bi, ci, di = row
        inv = 1.0 / (bi - ai * cp_prev)
        cp = ci * inv
        dp = (di - ai * dp_prev) * inv
        return (cp, dp), (cp, dp)

    dshape = jnp.broadcast_shapes(d.shape[1:], cshape)
    d = jnp.broadcast_to(d, (n,) + dshape)
    init = (jnp.zeros(cshape, d.dtype), jnp.zeros(dshape, d.dtype))
    a, b, c = (jnp.broadcast_to(x, (n,) + x.shape[1:]) for x in (a, b, c))
    _, (cp, dp) = jax.lax.scan(forward, init, (a, b, c, d))

    def backward(x_next, row):
        cpi, dpi = row
        x = dpi - cpi * x_next
        return x, x

    _, x = jax.lax.scan(backward, jnp.zeros(dshape, d.dtype), (cp, dp), reverse=True)
    return x


def thomas_cyclic(a: Array, b: Array, c: Array, d: Array) -> Array:
    """Periodic tridiagonal systems: a_0 couples x_0 to x_{n−1}, c_{n−1} x_{n−1} to x_0.

    Sherman-Morrison on top of ``thomas`` (two solves; Press et al.,
    Numerical Recipes, section 2.7).
    """
    n = d.shape[0]
    alpha, beta = a[0], c[n - 1]
    gamma = -b[0]
    b_mod = b.at[0].add(-gamma).at[n - 1].add(-alpha * beta / gamma)
    b_mod = jnp.broadcast_to(b_mod, (n,) + jnp.broadcast_shapes(b.shape[1:], a.shape[1:]))
    x = thomas(a, b_mod, c, d)
    u = jnp.zeros((n,) + jnp.broadcast_shapes(gamma.shape, beta.shape), d.dtype)
    u = u.at[0].set(gamma).at[n - 1].set(beta)
    z = thomas(a, b_mod, c, u)
    fact = (x[0] + alpha * x[n - 1] / gamma) / (1.0 + z[0] + alpha * z[n - 1] / gamma)
    return x - fact * z


def _sweep(c: Array, dt, h: float, D: Array, decay: Array, bc, pinned) -> Array:
    """Backward-Euler solve along axis 0 of c (layout (n, F, ...))."""
    n = c.shape[0]
    r = dt / h**2
    if D.shape[0] == 1:
        inner = D
        d_lo = d_hi = D
    else:
        inner = 0.5 * (D[:-1] + D[1:])
        d_lo, d_hi = D[:1], D[-1:]
    inner = jnp.broadcast_to(inner, (n - 1,) + inner.shape[1:])
    periodic = bc is None
    if periodic:
        wrap = d_lo if D.shape[0] == 1 else 0.5 * (d_lo + d_hi)
        d_minus = jnp.concatenate([wrap, inner], axis=0)
        d_plus = jnp.concatenate([inner, wrap], axis=0)
        diag = 1.0 + r * (d_minus + d_plus) + dt * decay / 3.0
        rhs = c
    else:
        (w_lo, v_lo, q_lo), (w_hi, v_hi, q_hi) = bc
        zero = jnp.zeros_like(inner[:1])
        d_minus = jnp.concatenate([zero, inner], axis=0)
        d_plus = jnp.concatenate([inner, zero], axis=0)
        diag = 1.0 + r * (d_minus + d_plus) + dt * decay / 3.0
        diag = diag.at[0].add(r * 2.0 * w_lo * d_lo[0]).at[n - 1].add(r * 2.0 * w_hi * d_hi[0])
        src_lo = dt * (w_lo * 2.0 * d_lo[0] * v_lo / h**2 + (1.0 - w_lo) * q_lo / h)
        src_hi = dt * (w_hi * 2.0 * d_hi[0] * v_hi / h**2 + (1.0 - w_hi) * q_hi / h)
        rhs = c.at[0].add(src_lo).at[n - 1].add(src_hi)
    lower, upper = -r * d_minus, -r * d_plus
    if pinned is not None:
        lower = jnp.where(pinned, 0.0, lower)
        upper = jnp.where(pinned, 0.0, upper)
        diag = jnp.where(pinned, 1.0, diag)
        rhs = jnp.where(pinned, c, rhs)
    solve = thomas_cyclic if periodic else thomas
    return solve(lower, diag, upper, rhs)


def lod_step(
    c: Array,
    dt,
    spacing: tuple[float, float, float],
    D: Array,
    decay: Array,
    bc: tuple,
    pinned: Array | None = None,
    source: Array | None = None,
) -> Array:
    """One implicit LOD diffusion-decay step (x, y then z sweeps).

    Arguments as ``diffusion_rate``: c (F, X, Y, Z); D (F,) or (F, X, Y, Z)
    in um²/min; decay (F,) or (F, X, Y, Z) in 1/min (per-voxel uptake goes
    into every sweep's diagonal as λ/3); bc one entry per axis (None =
    periodic); pinned an optional (X, Y, Z) mask; source an optional S added
    to the first sweep's right-hand side as dt·S. Unconditionally stable; first order in
    time with an O(dt) splitting error that vanishes at a steady state which
    varies along one axis only.
    """
    nd = c.ndim
    D = _per_channel(D, nd)
    decay = _per_channel(decay, nd)
    if source is not None:
        add = dt * jnp.asarray(source, c.dtype)
        c = c + (add if pinned is None else jnp.where(pinned, 0.0, add))
    for axis in range(3):
        ax = axis + 1
        cm = jnp.moveaxis(c, ax, 0)
        Dm = jnp.moveaxis(D, ax, 0)
        lam = jnp.moveaxis(decay, ax, 0)
        bca = bc[axis]
        if bca is not None:
            bca = tuple(
                tuple(jnp.moveaxis(_per_channel(x, nd), ax, 0)[0]
                      for x in (_closed(c) if face is None else face)) for face in bca
            )
        pm = None
        if pinned is not None:
            pm = jnp.moveaxis(jnp.broadcast_to(pinned, c.shape[1:])[None], ax, 0)
        cm = _sweep(cm, dt, spacing[axis], Dm, lam, bca, pm)
        c = jnp.moveaxis(cm, 0, ax)
    return c
