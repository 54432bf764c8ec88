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

Where D and the decay are per channel and no voxel is pinned (BioFVM's
constant-coefficient case, the one its LOD solver handles), each sweep is a
SPIKE solve by blocks: two batched matrix products along the axis as the data
lies, no loop over rows and no transpose (``_spike_sweep``). Otherwise the
sweep moves the axis to the front and runs the Thomas algorithm as a
``lax.scan`` over rows. Both solve the same system (tested to round-off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._diffusion import _closed, _per_channel

Array = jax.Array


def thomas(a: Array, b: Array, c: Array, d: Array) -> Array:
    """Solve tridiagonal systems along axis 0 by the Thomas algorithm.

    Row i reads a_i x_{i−1} + b_i x_i + c_i x_{i+1} = d_i (a_0 and c_{n−1} are
    ignored). a, b, c have shape (n, ...) broadcastable to d's (n, ...): a
    coefficient shared by many lines costs nothing extra. Every line of the
    batch advances together in one ``lax.scan`` over n; no pivoting, so the
    matrix must be diagonally dominant (diffusion matrices are).

    Differentiated as a linear solve (``lax.custom_linear_solve``), not
    through the scans: reverse mode solves the transposed system once (one
    more Thomas solve) and reaches a, b, c through the product A·x; forward
    mode solves with the same matrix. Through the scans, the gradient of 300
    steps of a 30-shell spheroid took 994 us a step; as a linear solve, 793.
    """
    n = d.shape[0]
    first = (jnp.arange(n) > 0).reshape((n,) + (1,) * (a.ndim - 1))
    last = (jnp.arange(n) < n - 1).reshape((n,) + (1,) * (c.ndim - 1))
    a = jnp.where(first, a, 0.0)
    c = jnp.where(last, c, 0.0)

    def matvec(x):
        below = jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])  # x_{i−1}
        above = jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])  # x_{i+1}
        return a * below + b * x + c * above

    def solve(_, rhs):
        return _thomas_scan(a, b, c, rhs)

    def transpose_solve(_, rhs):
        # (Aᵀ)_{i,i−1} = c_{i−1}, (Aᵀ)_{i,i+1} = a_{i+1}
        at = jnp.concatenate([jnp.zeros_like(c[:1]), c[:-1]])
        ct = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
        return _thomas_scan(at, b, ct, rhs)

    d = jnp.broadcast_to(d, (n,) + jnp.broadcast_shapes(a.shape[1:], b.shape[1:], c.shape[1:],
                                                        d.shape[1:]))
    return jax.lax.custom_linear_solve(matvec, d, solve, transpose_solve)


def _thomas_scan(a: Array, b: Array, c: Array, d: Array) -> Array:
    """The Thomas algorithm itself (``thomas``'s forward pass): a forward elimination and a
    back substitution, each a ``lax.scan`` over the rows; a_0 = c_{n−1} = 0."""
    n = d.shape[0]
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


def _face_terms(face, D_edge, dt, h: float):
    """(diagonal addition, right-hand-side addition) of a boundary row: a Dirichlet face
    as the flux 2D(value − c)/h, a Neumann face as its inward flux."""
    w, value, flux = face
    return (2.0 * dt / h**2 * w * D_edge,
            dt * (w * 2.0 * D_edge * value / h**2 + (1.0 - w) * flux / h))


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
        zero = jnp.zeros_like(inner[:1])
        d_minus = jnp.concatenate([zero, inner], axis=0)
        d_plus = jnp.concatenate([inner, zero], axis=0)
        diag = 1.0 + r * (d_minus + d_plus) + dt * decay / 3.0
        (add_lo, src_lo), (add_hi, src_hi) = (_face_terms(f, D_edge[0], dt, h)
                                              for f, D_edge in zip(bc, (d_lo, d_hi)))
        diag = diag.at[0].add(add_lo).at[n - 1].add(add_hi)
        rhs = c.at[0].add(src_lo).at[n - 1].add(src_hi)
    lower, upper = -r * d_minus, -r * d_plus
    if pinned is not None:
        lower = jnp.where(pinned, 0.0, lower)
        upper = jnp.where(pinned, 0.0, upper)
        diag = jnp.where(pinned, 1.0, diag)
        rhs = jnp.where(pinned, c, rhs)
    solve = thomas_cyclic if periodic else thomas
    return solve(lower, diag, upper, rhs)


# --- Constant coefficients: SPIKE, no loop over the axis and no transpose -------------
#
# Where D and the decay are the same in every voxel of a channel and no voxel is
# pinned (BioFVM's "constant coefficients" case), every line of a channel along an
# axis has the same matrix T. Split the axis into blocks of k rows; all diagonal
# blocks equal one tridiagonal B, except the first and last rows, whose diagonals
# differ by δ₀ and δₙ (the boundary). With y = B⁻¹ d per block, w = B⁻¹e₁ and
# v = B⁻¹e_k, the solution is (SPIKE: Polizzi & Sameh 2006, Parallel Comput. 32:177)
#     x_j = y_j − w α_j − v β_j,
#     α_j = ℓ x_{j−1,k} (+ δ₀ x_{0,1} in block 0),  β_j = u x_{j+1,1} (+ δₙ x_{n} in the last),
# and the first and last entries of every block solve a small reduced system
# (2·n/k unknowns per line, the same matrix for every line of a channel). The block
# product is one batched dot in the layout the data has (measured at 128³ × 8
# float32 on 2 CPU cores: a whole step of three sweeps 146 ms, against 150-170 ms
# for one sweep by a `lax.scan` of Thomas rows with its transposes; the same products
# as unrolled sums over a block's rows do not vectorise, 94-240 ms per sweep).

def _block_size(n: int) -> int | None:
    """The divisor of n nearest 16 within 4..32 (blocks of the SPIKE solve), or None."""
    ks = [k for k in range(4, 33) if n % k == 0]
    return min(ks, key=lambda k: (abs(k - 16), -k)) if ks else None


def _spike_operators(lower, diag, upper, delta_lo, delta_hi, n: int, k: int, periodic: bool):
    """(B⁻¹ (F, k, k), its first and last columns w and v (F, k), the reduced system's
    inverse (F, 2n/k, 2n/k)) of one axis.

    lower, diag, upper: a channel's interior matrix rows (F,); delta_lo, delta_hi:
    what the first and last rows add to the diagonal.
    """
    nb, m = n // k, 2 * (n // k)
    eye = jnp.eye(k, dtype=diag.dtype)
    B = (diag[:, None, None] * eye + lower[:, None, None] * jnp.eye(k, k=-1, dtype=diag.dtype)
         + upper[:, None, None] * jnp.eye(k, k=1, dtype=diag.dtype))
    Binv = jnp.linalg.inv(B)
    w, v = Binv[:, :, 0], Binv[:, :, k - 1]
    # Unknown 2j is x_{j,first}, 2j+1 is x_{j,last}. Row (j, e) of the reduced system:
    # x_{j,e} + w_e α_j + v_e β_j = y_{j,e}.
    j = np.arange(nb)
    rows, cols, vals = [], [], []
    for e, i in ((0, 0), (1, k - 1)):
        r = 2 * j + e
        prev = (2 * j - 1) % m            # x_{j-1,last}; block 0 wraps (periodic only)
        nxt = (2 * j + 2) % m             # x_{j+1,first}; the last block wraps
        keep_prev = j > 0 if not periodic else np.ones(nb, bool)
        keep_next = j < nb - 1 if not periodic else np.ones(nb, bool)
        rows += [r[keep_prev], r[keep_next]]
        cols += [prev[keep_prev], nxt[keep_next]]
        vals += [jnp.broadcast_to(w[:, i:i + 1] * lower[:, None], (w.shape[0], int(keep_prev.sum()))),
                 jnp.broadcast_to(v[:, i:i + 1] * upper[:, None], (v.shape[0], int(keep_next.sum())))]
        if not periodic:
            rows += [np.array([e]), np.array([m - 2 + e])]
            cols += [np.array([0]), np.array([m - 1])]
            vals += [(w[:, i] * delta_lo)[:, None], (v[:, i] * delta_hi)[:, None]]
    C = jnp.zeros((w.shape[0], m, m), diag.dtype).at[:, np.concatenate(rows), np.concatenate(cols)].add(
        jnp.concatenate(vals, axis=1))
    return Binv, w, v, jnp.linalg.inv(jnp.eye(m, dtype=diag.dtype) + C)


def _block_product(M: Array, rhs: Array, ax: int, k: int) -> Array:
    """M (F, k, k) applied to every block of k rows along axis ax of rhs (F, ...).

    One batched matrix product in the layout XLA's CPU dot takes without
    transposing: the blocks' rows contracted where they lie.
    """
    F, n = rhs.shape[0], rhs.shape[ax]
    outer = int(np.prod(rhs.shape[1:ax], dtype=int))
    inner = int(np.prod(rhs.shape[ax + 1:], dtype=int))
    if inner == 1:
        y = jnp.einsum("fmb,fab->fma", rhs.reshape(F, -1, k), M)
    elif outer == 1:
        Mb = jnp.broadcast_to(M[:, None], (F, n // k, k, k))
        y = jnp.einsum("fjab,fjbq->fjaq", Mb, rhs.reshape(F, n // k, k, inner))
    else:
        y = jnp.einsum("fab,fpjbq->fpjaq", M, rhs.reshape(F, outer, n // k, k, inner))
    return y.reshape(rhs.shape)


def _spike_sweep(rhs, ax: int, coefficients, k: int, periodic: bool):
    """Solve T x = rhs along axis ax of rhs (F, X, Y, Z); coefficients as ``_spike_operators``'."""
    lower, diag, upper, delta_lo, delta_hi = coefficients
    n = rhs.shape[ax]
    nb = n // k
    Binv, w, v, Rinv = _spike_operators(lower, diag, upper, delta_lo, delta_hi, n, k, periodic)
    split = rhs.shape[:ax] + (nb, k) + rhs.shape[ax + 1:]
    y = _block_product(Binv, rhs, ax, k).reshape(split)
    ends = jnp.concatenate([jax.lax.index_in_dim(y, 0, ax + 1), jax.lax.index_in_dim(y, k - 1, ax + 1)],
                           axis=ax + 1)                          # y_{j,first}, y_{j,last}
    letters = "abcdefgh"[: rhs.ndim]
    spec = letters[:ax] + "r" + letters[ax + 1:]
    z = jnp.einsum(f"asr,{spec}->{spec.replace('r', 's')}", Rinv,
                   ends.reshape(rhs.shape[:ax] + (2 * nb,) + rhs.shape[ax + 1:]))
    z = z.reshape(split[:ax + 1] + (2,) + split[ax + 2:])
    first = jax.lax.index_in_dim(z, 0, ax + 1)                  # x_{j,first}: (.., nb, 1, ..)
    last = jax.lax.index_in_dim(z, 1, ax + 1)
    shape = (rhs.shape[0],) + (1,) * rhs.ndim
    alpha = lower.reshape(shape) * jnp.roll(last, 1, axis=ax)    # from block j − 1
    beta = upper.reshape(shape) * jnp.roll(first, -1, axis=ax)   # from block j + 1
    if not periodic:
        j = jnp.arange(nb).reshape((nb,) + (1,) * (rhs.ndim - ax))
        alpha = jnp.where(j == 0, delta_lo.reshape(shape) * first, alpha)
        beta = jnp.where(j == nb - 1, delta_hi.reshape(shape) * last, beta)
    coef = (rhs.shape[0],) + (1,) * ax + (k,) + (1,) * (rhs.ndim - ax - 1)
    x = y - w.reshape(coef) * alpha - v.reshape(coef) * beta
    return x.reshape(rhs.shape)


def _uniform_sweep(c: Array, ax: int, k: int, dt, h: float, D: Array, decay: Array, bc) -> Array:
    """``_sweep`` along axis ax of c (F, X, Y, Z) for per-channel D and decay (F,), by SPIKE."""
    r = dt / h**2
    lower = -r * D
    diag = 1.0 + 2.0 * r * D + dt * decay / 3.0
    if bc is None:
        return _spike_sweep(c, ax, (lower, diag, lower, None, None), k, periodic=True)
    deltas, n = [], c.shape[ax]
    for face, end in zip(bc, (0, n - 1)):
        face = tuple(jnp.reshape(x, -1) for x in (_closed(c) if face is None else face))
        add, src = _face_terms(face, D, dt, h)
        deltas.append(add - r * D)                        # one neighbour, plus the face
        index = (slice(None),) * ax + (end,)
        c = c.at[index].add(src.reshape((-1,) + (1,) * (c.ndim - 2)))
    return _spike_sweep(c, ax, (lower, diag, lower, *deltas), k, periodic=False)


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
    varies along one axis only. Per-channel D and decay without ``pinned`` take
    the SPIKE sweeps along axes whose length has a divisor between 4 and 32; the
    rest take Thomas.
    """
    nd = c.ndim
    D = _per_channel(D, nd)
    decay = _per_channel(decay, nd)
    if source is not None:
        add = dt * jnp.asarray(source, c.dtype)
        c = c + (add if pinned is None else jnp.where(pinned, 0.0, add))
    leaves = jax.tree_util.tree_leaves(bc)
    uniform = (pinned is None and D.shape[1:] == decay.shape[1:] == (1,) * (nd - 1)
               and all(jnp.size(x) == c.shape[0] for x in leaves))
    for axis in range(3):
        ax = axis + 1
        k = _block_size(c.shape[ax]) if uniform else None
        if k is not None:
            c = _uniform_sweep(c, ax, k, dt, spacing[axis], D.reshape(-1), decay.reshape(-1), bc[axis])
            continue
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
