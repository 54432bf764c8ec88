"""Backward Euler for stiff solutes: conjugate gradients preconditioned by multigrid.

One step solves, per channel, the backward-Euler system of the 7-point
finite-volume operator of ``diffusion_rate``

    (I − dt·A) c' = c + dt·(S + b)        (A: diffusion, decay, uptake; b: face sources)

to a relative residual ``rtol``. Its fixed point is the exact steady state of
the discrete operator at any dt, and its cost does not grow with D·dt/h²: the
number of iterations is set by the preconditioner, not by the stiffness
(an RKL2 step needs √(dt·ρ) stages; oxygen at h = 20 um, dt = 2 min: 164).

The matrix is symmetric positive definite (flux form, symmetric face
coefficients, λ ≥ 0; pinned voxels become identity rows whose couplings move
to the right-hand side), stored as a diagonal and one coupling array per axis
(``w[i]`` couples voxel i to voxel i+1, wrapping on periodic axes).

Preconditioner: one V-cycle of aggregation multigrid. Coarse cells are pairs
of cells along every axis longer than one (an odd remainder joins the last
pair); the coarse matrix is the Galerkin product Pᵀ M P of the piecewise-constant
prolongation P, again a 7-point matrix (sums of the couplings that cross
between coarse cells; the diagonal less twice the couplings inside one); the
levels go down to one cell, solved exactly. Damped Jacobi smooths before and
after the coarse correction, the same number of sweeps, so the cycle is a
symmetric operator and CG may use it (aggregation as in Vaněk, Mandel &
Brezina 1996, without their smoothing of the prolongation). The coarse
correction is scaled by a fixed factor (``OVERCORRECT``, tuned by measurement):
piecewise-constant prolongation makes it too weak on its own.

The solve stops at ``max_iter`` iterations whether or not it met ``rtol``;
nothing reports that yet (the iteration count is ``pcg``'s second result).

The solve is ``lax.custom_linear_solve``: reverse mode differentiates it by
the implicit function theorem (one more solve with the same symmetric matrix
for the cotangent), never through the iterations. Every solve starts
from the best multiple of the previous field (see ``implicit_step``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._diffusion import Halo, _per_channel, _slice, add_plane, after

Array = jax.Array

# Tuned on the tissue's oxygen and lactate at 32³, dt = 2 (iterations to 1e-6 from
# zero): these give 10 and 11; ω 0.8 with 1.6, 12 and 12; one sweep, 11 to 25.
SWEEPS = 2  # Jacobi sweeps before and after each coarse correction
OMEGA = 0.9  # Jacobi damping
OVERCORRECT = 1.4  # coarse correction factor (piecewise-constant prolongation is too weak)


class Matrix(NamedTuple):
    """A symmetric 7-point matrix: M x = diag·x − Σ_axes (w·x[i+1] + w[i−1]·x[i−1])."""

    diag: Array  # (F, X, Y, Z)
    w: tuple  # per axis, (F, X, Y, Z): coupling of voxel i and i+1 (0 where none)


def _up(x: Array, ax: int, halo: Halo | None = None) -> Array:
    """x[i+1] at i (wrapping); along a split x axis (``halo``, ax 1) the last plane's from
    the next slab (zeros past the last slab, whose last coupling is 0)."""
    if halo is not None and ax == 1:
        n = x.shape[1]
        return jnp.concatenate([_slice(x, 1, n, 1), halo.from_above(_slice(x, 0, 1, 1))], 1)
    return jnp.roll(x, -1, axis=ax)


def _down(x: Array, ax: int, halo: Halo | None = None) -> Array:
    """x[i−1] at i (wrapping); along a split x axis from the slab below."""
    if halo is not None and ax == 1:
        n = x.shape[1]
        return jnp.concatenate([halo.from_below(_slice(x, n - 1, n, 1)), _slice(x, 0, n - 1, 1)],
                               1)
    return jnp.roll(x, 1, axis=ax)


def matvec(m: Matrix, x: Array, halo: Halo | None = None) -> Array:
    """M x; ``halo``: x is split along its axis 1 into slabs (``Halo``), M with it."""
    out = m.diag * x
    for a, w in enumerate(m.w):
        ax = a + 1
        if w is not None:
            out = out - w * _up(x, ax, halo) - _down(w * x, ax, halo)
    return out


def backward_euler_system(c, dt, spacing, D, decay, bc, pinned=None, source=None):
    """(Matrix, right-hand side) of one backward-Euler step; arguments as ``diffusion_rate``."""
    nd = c.ndim
    shape = c.shape
    halo = bc[0] if isinstance(bc[0], Halo) else None
    if halo is not None:  # the x axis split into slabs: as a wrap, cut at the true faces
        bc = (halo.faces,) + tuple(bc[1:])
    D = _per_channel(jnp.asarray(D, c.dtype), nd)
    decay = _per_channel(jnp.asarray(decay, c.dtype), nd)
    diag = jnp.broadcast_to(1.0 + dt * decay, shape)
    rhs = c if source is None else c + dt * jnp.asarray(source, c.dtype)
    ws = []
    for axis, h in enumerate(spacing):
        ax = axis + 1
        n = shape[ax]
        periodic = bc[axis] is None
        split = halo if axis == 0 else None
        owns = (1.0, 1.0) if split is None or periodic else split.at_faces(c.dtype)
        if n == 1 and split is None:  # a periodic single cell couples only to itself
            ws.append(None)
        else:
            if D.shape[ax] == 1:
                w = jnp.broadcast_to(dt * D / h**2, shape)
            else:
                w = dt * 0.5 * (D + _up(D, ax, split)) / h**2
            if not periodic:  # the last face is a boundary face: no coupling
                last = jnp.arange(n) == n - 1
                if split is not None:  # only the last slab's is
                    last = last & (owns[1] > 0)
                keep = jnp.logical_not(last).reshape((n,) + (1,) * (nd - ax - 1))
                w = jnp.where(keep, w, 0.0)
            ws.append(w)
            diag = diag + w + _down(w, ax, split)
        if periodic:
            continue
        d_edge = (D, D) if D.shape[ax] == 1 else (_slice(D, 0, 1, ax), _slice(D, n - 1, n, ax))
        for face, idx, de, here in zip(bc[axis], (0, n - 1), d_edge, owns):
            if face is None:
                continue
            fw, v, q = (_per_channel(jnp.asarray(x, c.dtype), nd) for x in face)
            fw, v, q = here * fw, here * v, here * q  # a split axis's faces: first, last slab
            diag = add_plane(diag, dt * fw * 2.0 * de / h**2, ax, idx)
            rhs = add_plane(rhs, dt * (fw * 2.0 * de * v / h**2 + (1.0 - fw) * q / h), ax, idx)
    if pinned is not None:
        held = jnp.where(pinned, c, 0.0)
        free = jnp.logical_not(pinned)
        # couplings to held voxels move to the right-hand side; the rows of
        # held voxels become identity rows
        for a, w in enumerate(ws):
            if w is None:
                continue
            ax = a + 1
            split = halo if a == 0 else None
            rhs = rhs + w * _up(held, ax, split) + _down(w * held, ax, split)
            ws[a] = jnp.where(free & _up(free[None], ax, split)[0], w, 0.0)
        diag = jnp.where(pinned, 1.0, diag)
        rhs = jnp.where(pinned, c, rhs)
    return Matrix(diag, tuple(ws)), rhs


# -- aggregation multigrid -----------------------------------------------------

def _pairs(x: Array, ax: int) -> Array:
    """Sum cells 2I and 2I+1 along ax (an odd last cell joins the last pair)."""
    n = x.shape[ax]
    m = n // 2
    head = _slice(x, 0, 2 * m, ax)
    shape = head.shape[:ax] + (m, 2) + head.shape[ax + 1:]
    y = head.reshape(shape).sum(axis=ax + 1)
    if n % 2:
        last = _slice(y, m - 1, m, ax) + _slice(x, n - 1, n, ax)
        y = jnp.concatenate([_slice(y, 0, m - 1, ax), last], axis=ax)
    return y


def _spread(x: Array, ax: int, n: int) -> Array:
    """Transpose of ``_pairs``: each coarse value to its cells."""
    y = jnp.repeat(x, 2, axis=ax)
    if n % 2:
        y = jnp.concatenate([y, _slice(x, x.shape[ax] - 1, x.shape[ax], ax)], axis=ax)
    return y


def _faces(w: Array, ax: int) -> tuple[Array, Array]:
    """Couplings along a coarsened axis: (inside each coarse cell, summed; crossing to the next).

    Face i couples cells i and i+1. Cells 2I, 2I+1 form coarse cell I (an odd
    last cell joins the last pair): faces 2I (and n−2 when n is odd) lie inside,
    faces 2I+1 and the last (wrap) face cross to the next coarse cell.
    """
    n = w.shape[ax]
    m = n // 2

    def every_other(start, stop):
        return w[tuple(slice(start, stop, 2) if k == ax else slice(None) for k in range(w.ndim))]

    inner = every_other(0, 2 * m - 1)
    if n % 2:
        inner = jnp.concatenate([_slice(inner, 0, m - 1, ax),
                                 _slice(inner, m - 1, m, ax) + _slice(w, n - 2, n - 1, ax)], axis=ax)
    cross = jnp.concatenate([every_other(1, 2 * m - 2), _slice(w, n - 1, n, ax)], axis=ax)
    return inner, cross


def _coarsen(m: Matrix, halo: Halo | None = None) -> Matrix:
    """Galerkin Pᵀ M P, P the piecewise-constant prolongation from pairs along
    every axis longer than one cell. ``halo``: x is split into slabs of an even
    number of cells, each paired on its own device; a slab's last coupling stays
    the one to the next slab's first cell."""
    axes = [a for a in range(3) if m.diag.shape[a + 1] > 1 or (a == 0 and halo is not None)]
    diag = m.diag
    for a in axes:
        diag = _pairs(diag, a + 1)
    ws = []
    for a, w in enumerate(m.w):
        if w is None:
            ws.append(None)
            continue
        inner, cross = _faces(w, a + 1)
        for b in axes:
            if b != a:
                inner, cross = _pairs(inner, b + 1), _pairs(cross, b + 1)
        diag = diag - 2.0 * inner
        if cross.shape[a + 1] == 1 and not (a == 0 and halo is not None):
            # one coarse cell couples to itself: part of the diagonal
            diag = diag - 2.0 * cross
            cross = None
        ws.append(cross)
    return Matrix(diag, tuple(ws))


def hierarchy(m: Matrix, halo: Halo | None = None) -> tuple[list[Matrix], list[Matrix]]:
    """The matrices of every level, fine to one cell: (split, whole).

    Without ``halo`` all levels are in ``whole``. With it (x split into slabs) the
    levels whose slabs pair up along x stay split, each device coarsening its own
    slab, which gives the one-device levels cut into slabs; the first level whose
    slab is one cell (or odd) along x is gathered from every device and coarsened
    on each, whole, from there (small for slabs a power of two wide: 8³ cells at
    512³ in slabs of 64; an eighth of the grid for slabs of 6)."""
    split = [m] if halo is not None else []
    while halo is not None and split[-1].diag.shape[1] % 2 == 0:
        split.append(_coarsen(split[-1], halo))
    if halo is not None:
        m = _gather(split.pop(), halo)
    whole = [m]
    while max(whole[-1].diag.shape[1:]) > 1:
        whole.append(_coarsen(whole[-1]))
    return split, whole


def _gather(m: Matrix, halo: Halo) -> Matrix:
    """A split level made whole on every device (``all_gather`` along x)."""
    def whole(x):
        return None if x is None else jax.lax.all_gather(x, halo.name, axis=1, tiled=True)

    return Matrix(whole(m.diag), tuple(whole(w) for w in m.w))


def _own(x: Array, halo: Halo, width: int) -> Array:
    """This device's slab of a whole level's array."""
    return jax.lax.dynamic_slice_in_dim(x, halo.index() * width, width, axis=1)


def v_cycle(levels, r: Array, k: int = 0, halo: Halo | None = None) -> Array:
    """One symmetric V-cycle from a zero guess: an approximation of M⁻¹ r.

    levels: ``hierarchy``'s (split, whole) pair; k counts over both."""
    split, whole = levels
    if k == len(split):  # the whole levels: gathered, cycled on every device, own slab kept
        if halo is None:
            return _v_cycle_whole(whole, r, 0)
        full = jax.lax.all_gather(r, halo.name, axis=1, tiled=True)
        return _own(_v_cycle_whole(whole, full, 0), halo, r.shape[1])
    return _cycle_level(split[k], r, lambda c: v_cycle(levels, c, k + 1, halo), halo)


def _v_cycle_whole(levels: list[Matrix], r: Array, k: int) -> Array:
    m = levels[k]
    if k == len(levels) - 1:
        return r / m.diag
    return _cycle_level(m, r, lambda c: _v_cycle_whole(levels, c, k + 1), None)


def _cycle_level(m: Matrix, r: Array, coarser, halo: Halo | None) -> Array:
    """Smooth, correct on the next level (``coarser``), smooth: one level of a V-cycle."""
    inv = OMEGA / m.diag

    def smooth(x):
        # in a loop: unrolled, XLA fuses the chain of stencils and recomputes
        # each sweep's input at every point (4 sweeps at 64³: 73 ms, not 3 ms;
        # an optimization_barrier does not stop it)
        return jax.lax.fori_loop(0, SWEEPS,
                                 lambda _, x: x + inv * (r - matvec(m, x, halo)), x)

    x = smooth(jnp.zeros_like(r))
    res = r - matvec(m, x, halo)
    shape = r.shape
    coarse = res
    # a split x axis always coarsens: the whole grid has more than one cell along it
    axes = [a + 1 for a in range(3) if shape[a + 1] > 1 or (a == 0 and halo is not None)]
    for ax in axes:
        coarse = _pairs(coarse, ax)
    e = coarser(coarse)
    for ax in reversed(axes):
        e = _spread(e, ax, shape[ax])
    return smooth(x + OVERCORRECT * e)


def _dot(a: Array, b: Array, halo: Halo | None = None) -> Array:
    """Per channel Σ a·b over the grid (over every slab with ``halo``)."""
    local = jnp.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)
    return local if halo is None else jax.lax.psum(local, halo.name)


def pcg(m: Matrix, b: Array, x0: Array, rtol: float, max_iter: int, halo: Halo | None = None):
    """Solve M x = b per channel from x0; stops when every channel has
    ‖r‖ ≤ rtol·‖b‖ or after max_iter iterations. Returns (x, iterations).

    Where x0 already meets the tolerance (a solute at rest, a drug not yet
    given) nothing else is computed: no hierarchy, no V-cycle. ``halo``: the
    arrays are slabs of a grid split along x; the sums are over all of them (one
    all-reduce of F numbers each), so every device takes the same iterations."""
    goal = rtol**2 * _dot(b, b, halo)
    r0 = b - matvec(m, x0, halo)

    def not_done(r, it):
        return jnp.logical_and(it < max_iter, jnp.any(_dot(r, r, halo) > goal))

    def iterate():
        lv = hierarchy(m, halo)
        # split: the V-cycle's first exchanges wait for the coarse level's gathering
        # (``after``: else they can interleave with it, differently on each device)
        z = v_cycle(lv, r0 if halo is None else after(r0, lv[1]), 0, halo)

        def body(s):
            x, r, p, rz, it = s
            q = matvec(m, p, halo)
            pq = _dot(p, q, halo)
            alpha = jnp.where(pq > 0, rz / jnp.where(pq > 0, pq, 1.0), 0.0)
            x = x + alpha * p
            r = r - alpha * q
            z = v_cycle(lv, r, 0, halo)
            rz_new = _dot(r, z, halo)
            beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
            return x, r, z + beta * p, rz_new, it + 1

        x, _, _, _, it = jax.lax.while_loop(
            lambda s: not_done(s[1], s[4]), body,
            (x0, r0, z, _dot(r0, z, halo), jnp.array(0, jnp.int32)))
        return x, it

    return jax.lax.cond(not_done(r0, 0), iterate, lambda: (x0, jnp.array(0, jnp.int32)))


def implicit_step(c, dt, spacing, D, decay, bc, pinned=None, source=None,
                  rtol: float | None = None, max_iter: int = 50, reference=None) -> Array:
    """One backward-Euler diffusion-decay step, solved by multigrid-preconditioned CG.

    Arguments as ``diffusion_rate``; rtol (default 1e-5 in float32, 1e-10 in
    float64) bounds each channel's residual relative to its right-hand side;
    max_iter caps the iterations. Unconditionally stable, first order in time,
    positivity-preserving for the exact solve (an M-matrix), and its fixed point
    is the discrete steady state exactly. Differentiable in reverse and forward
    mode through ``lax.custom_linear_solve`` (implicit differentiation).

    Every solve (the value, and tangents or cotangents) starts from the best
    multiple of the previous field c: the value's solve starts from c itself
    (its right-hand side is M c at a steady state), a tangent's from whatever
    part of it lies along M c.

    reference: optional level per channel (F,) that the solve is taken
    relative to: it solves for c' − reference, so the tolerance applies to the
    departure from that level. Give it where much of the domain is held near
    one level by a large rate (an organoid's well-mixed medium: rows there of
    size rate·dt·level would otherwise dominate ‖b‖ and loosen the tolerance
    for the organoid by that factor). The solution is the same.
    """
    m, rhs = backward_euler_system(c, dt, spacing, D, decay, bc, pinned, source)
    halo = bc[0] if isinstance(bc[0], Halo) else None
    if rtol is None:
        rtol = 1e-5 if c.dtype == jnp.float32 else 1e-10
    if reference is not None:
        ref = jnp.broadcast_to(_per_channel(jnp.asarray(reference, c.dtype), c.ndim), c.shape)
        rhs = rhs - matvec(m, ref, halo)
        new = ref + _solve(m, rhs, c - ref, rtol, max_iter, halo)
    else:
        new = _solve(m, rhs, c, rtol, max_iter, halo)
    return new if pinned is None else jnp.where(pinned, c, new)  # held exactly, not to rtol


def _solve(m: Matrix, rhs: Array, guess: Array, rtol: float, max_iter: int,
           halo: Halo | None = None) -> Array:
    """M x = rhs by ``pcg``, differentiated implicitly; every solve starts from
    the best multiple of ``guess``."""
    frozen = jax.tree_util.tree_map(jax.lax.stop_gradient, m)
    start = jax.lax.stop_gradient(guess)
    u = matvec(frozen, start, halo)
    uu = _dot(u, u, halo)

    def solve(_, b):
        scale = jnp.where(uu > 0, _dot(b, u, halo) / jnp.where(uu > 0, uu, 1.0), 0.0)
        return pcg(frozen, b, scale * start, rtol, max_iter, halo)[0]

    return jax.lax.custom_linear_solve(lambda x: matvec(m, x, halo), rhs, solve,
                                       symmetric=True)
