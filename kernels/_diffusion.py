"""Finite-volume diffusion-decay operators on a cell-centred 3D grid.

Arrays are stacked fields ``c[channel, x, y, z]``. Every operator is written in
flux form, ``G_{i+1/2} = D_{i+1/2} (c_{i+1} - c_i) / h``, so it conserves mass
to round-off. The bulk pass closes every boundary face with a constant zero,
which XLA fuses into one vectorised loop; the true boundary fluxes are then
added in place on the six boundary planes. Measured at 8 x 128^3 float32 on
2 CPU cores (bench/RESULTS.md), this beats padding the contiguous axis with
``jnp.pad(mode="edge")`` and concatenating boundary faces built from slices of
c, each about twice as slow.

Boundary faces (``FaceBC``, per channel):
    Dirichlet  c = value on the face, half a cell outside the edge voxel centre:
               inward flux 2 D (value - c_edge) / h;
    Neumann    prescribed inward flux (amount um / min; 0 is no-flux);
    closed     ``None`` in place of a face's FaceBC: no flux, known statically,
               so no boundary plane is computed for it;
    periodic   the axis wraps (pass ``None`` for the axis);
    split      ``Halo``: the axis is split over the devices of a ``shard_map``
               mesh axis; each shard's faces along it exchange one edge plane
               with its neighbours (``jax.lax.ppermute``), and only the first
               and last shard apply the axis's true faces.
Dirichlet is imposed through the face flux, never by overwriting voxels, so
explicit, super-time-stepping and implicit solvers share the same discrete
steady state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class FaceBC(NamedTuple):
    """Boundary data of one face for every channel; each leaf has shape (F,).

    dirichlet: 1.0 where the face is Dirichlet, 0.0 where it is Neumann.
    value:     Dirichlet value (field units).
    flux:      Neumann inward flux (field units x um / min).
    """

    dirichlet: Array
    value: Array
    flux: Array


@jax.tree_util.register_pytree_node_class
class Halo:
    """An axis split into equal slabs over the ``count`` devices of mesh axis ``name``
    (inside ``jax.shard_map``): the axis entry of ``bc`` for the split axis.

    faces: the axis's true faces, ``(FaceBC lower, FaceBC upper)`` (each
    possibly ``None``: closed), applied by the first and the last shard; None:
    the axis is periodic, so the last shard's upper neighbour is the first.
    Every other face of a slab is an interface: its flux D(c_nb − c_edge)/h²
    reads the neighbour's edge plane, sent by one ``ppermute`` each way, so a
    stencil pass moves one plane per face and device (and a second for a D that
    varies in space). The slab's sum of fluxes is the whole grid's restricted to
    it: results equal one device's to round-off.
    """

    def __init__(self, name: str, count: int, faces):
        self.name, self.count, self.faces = name, int(count), faces

    def tree_flatten(self):
        return (self.faces,), (self.name, self.count)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])

    def __repr__(self):
        return f"Halo({self.name!r}, {self.count}, {self.faces!r})"

    def index(self):
        return jax.lax.axis_index(self.name)

    def at_faces(self, dtype):
        """(lower, upper): 1.0 on the shard that holds that true face, else 0.0."""
        i = self.index()
        return ((i == 0).astype(dtype), (i == self.count - 1).astype(dtype))

    def from_below(self, plane):
        """Each shard receives its lower neighbour's ``plane`` (zeros on the first, unless
        periodic)."""
        return self._shift(plane, 1)

    def from_above(self, plane):
        """Each shard receives its upper neighbour's ``plane`` (zeros on the last, unless
        periodic)."""
        return self._shift(plane, -1)

    def grown(self, x, k: int, axis: int, outside=None):
        """x grown along ``axis`` (the split one) by its neighbours' k edge planes each
        side; beyond a true face, zeros, or ``outside`` where given."""
        n = x.shape[axis]
        below = self.from_below(jax.lax.slice_in_dim(x, n - k, n, axis=axis))
        above = self.from_above(jax.lax.slice_in_dim(x, 0, k, axis=axis))
        if outside is not None and self.faces is not None:
            first, last = self.at_faces(x.dtype)
            below = jnp.where(first > 0, outside, below)
            above = jnp.where(last > 0, outside, above)
        return jnp.concatenate([below, x, above], axis=axis)

    def _shift(self, plane, k):
        n = self.count
        if self.faces is None:
            perm = [(i, (i + k) % n) for i in range(n)]
        else:
            perm = [(i, i + k) for i in range(n) if 0 <= i + k < n]
        if not perm:
            return jnp.zeros_like(plane)
        return jax.lax.ppermute(plane, self.name, perm)


def _firsts(tree, dtype) -> list:
    """The first entry of every non-empty floating array of ``tree``, in ``dtype``."""
    return [jnp.ravel(x)[0].astype(dtype) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.floating) and jnp.size(x)]


def _zero_from(tree, dtype) -> Array:
    """An exact zero (±0) in ``dtype`` that reads the first entry of every floating array
    of ``tree``: whatever takes it waits for all of them. A finite value times 0, which
    no rule of XLA's simplifier turns into a constant (a flag's 0·convert(isfinite(v))
    became select(flag, 0, 0), one simplification away from a constant)."""
    firsts = _firsts(tree, dtype)
    if not firsts:
        return jnp.zeros((), dtype)
    v = jnp.stack(firsts)
    return jnp.min(jnp.where(jnp.isfinite(v), v, 0.0)) * 0.0


def _touch(x: Array, z: Array) -> Array:
    """x with the scalar z added to its first entry."""
    first = (0,) * x.ndim
    return x.at[first].add(z)


@jax.custom_jvp
def after(x: Array, done) -> Array:
    """``x``, made to wait for the arrays of ``done`` (a pytree): its first entry plus an
    exact zero read from them (x itself where it is finite or NaN; a −0 there may
    become +0). Reverse mode's cotangent of ``done`` waits for the cotangent of ``x``
    in turn (the tangent rule below reads ``done``'s tangents, scaled by that zero).

    XLA's CPU runtime starts a loop once its inputs exist and orders collectives
    only by when they start: two loops of exchanges that no data orders run side by
    side and can interleave their exchanges differently on each device.
    docs/devices.md ("The order of the exchanges") says what that broke."""
    return _touch(x, _zero_from(done, x.dtype))


@after.defjvp
def _after_jvp(primals, tangents):
    x, done = primals
    x_dot, done_dot = tangents
    zero = _zero_from(done, x.dtype)
    read = sum(_firsts(done_dot, x.dtype), jnp.zeros((), x.dtype))
    return _touch(x, zero), _touch(x_dot, zero * read)


def _closed(c: Array) -> FaceBC:
    """A closed (no-flux) face as data: ``None`` in a ``bc`` tuple means the same, statically."""
    zero = jnp.zeros(c.shape[0], c.dtype)
    return FaceBC(zero, zero, zero)


def _per_channel(a: Array, ndim: int) -> Array:
    """Reshape a (F,) array to (F, 1, 1, 1) so that it broadcasts over a field."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (ndim - a.ndim)) if a.ndim == 1 else a


def _slice(a: Array, start: int, stop: int, axis: int) -> Array:
    return jax.lax.slice_in_dim(a, start, stop, axis=axis)


def _face_coefficient(D: Array, axis: int) -> tuple[Array, Array, Array]:
    """Interior-face, lower-edge and upper-edge coefficients along ``axis``.

    A per-channel coefficient (shape (F, 1, 1, 1)) is the same on every face;
    a spatially varying one is averaged arithmetically onto interior faces and
    taken from the edge voxel on boundary faces.
    """
    if D.shape[axis] == 1:
        return D, D, D
    n = D.shape[axis]
    inner = 0.5 * (_slice(D, 0, n - 1, axis) + _slice(D, 1, n, axis))
    return inner, _slice(D, 0, 1, axis), _slice(D, n - 1, n, axis)


def _bulk_rate(c: Array, spacing, D: Array, decay: Array, source=None) -> Array:
    """∇·(D∇c) − λc + S with every boundary face closed (zero flux).

    The closed faces are constant zeros, which XLA fuses into one vectorised
    pass; the true boundary fluxes are added by ``_add_boundary``.
    """
    out = -decay * c if source is None else source - decay * c
    for axis, h in enumerate(spacing):
        ax = axis + 1
        n = c.shape[ax]
        inner, _, _ = _face_coefficient(D, ax)
        g = _slice(c, 1, n, ax) - _slice(c, 0, n - 1, ax)
        if D.shape[ax] > 1:
            g = inner * g
        zero = jnp.zeros_like(_slice(g, 0, 1, ax))
        t = jnp.concatenate([g, zero], axis=ax) - jnp.concatenate([zero, g], axis=ax)
        out = out + (t * (1.0 / h**2) if D.shape[ax] > 1 else (D * (1.0 / h**2)) * t)
    return out


def _boundary_planes(c: Array, spacing, D: Array, bc) -> list:
    """Rate contributions of the boundary faces: (axis, index, plane) triples.

    Dirichlet: 2D(v − c_edge)/h²; Neumann: q/h; periodic: the wrap face's flux
    D(c_other − c_edge)/h². Each plane has shape (F, ..., 1, ...).
    """
    planes = []
    for axis, h in enumerate(spacing):
        ax = axis + 1
        n = c.shape[ax]
        _, d_lo, d_hi = _face_coefficient(D, ax)
        lo_cell = _slice(c, 0, 1, ax)
        hi_cell = _slice(c, n - 1, n, ax)
        if isinstance(bc[axis], Halo):
            planes += _slab_planes(c, bc[axis], ax, h, D, d_lo, d_hi, lo_cell, hi_cell)
            continue
        if bc[axis] is None:
            wrap = d_lo if D.shape[ax] == 1 else 0.5 * (d_lo + d_hi)
            flux = wrap * (hi_cell - lo_cell) / h**2
            planes += [(ax, 0, flux), (ax, n - 1, -flux)]
            continue
        for face, edge, d_edge, cell in ((bc[axis][0], 0, d_lo, lo_cell),
                                         (bc[axis][1], n - 1, d_hi, hi_cell)):
            if face is not None:  # None: closed, no flux, nothing to add
                planes.append((ax, edge, _face_plane(face, d_edge, cell, h)))
    return planes


def _face_plane(face: FaceBC, d_edge, cell, h):
    """A true face's rate on its edge plane: 2D(v − c_edge)/h² (Dirichlet), q/h (Neumann)."""
    w, v, q = (_per_channel(jnp.asarray(x, cell.dtype), cell.ndim) for x in face)
    return w * 2.0 * d_edge * (v - cell) / h**2 + (1.0 - w) * q / h


def _slab_planes(c, halo: Halo, ax, h, D, d_lo, d_hi, lo_cell, hi_cell) -> list:
    """A slab's two edge planes along its split axis: the flux through the interface
    with each neighbour, D_face(c_nb − c_edge)/h² (D_face the mean of the two voxels'
    for a D that varies in space, as ``_face_coefficient``), or the true face's on the
    shards that hold one."""
    n = c.shape[ax]
    below, above = halo.from_below(hi_cell), halo.from_above(lo_cell)
    if D.shape[ax] > 1:
        d_below = 0.5 * (d_lo + halo.from_below(d_hi))
        d_above = 0.5 * (d_hi + halo.from_above(d_lo))
    else:
        d_below = d_above = d_lo
    lo = d_below * (below - lo_cell) / h**2
    hi = d_above * (above - hi_cell) / h**2
    if halo.faces is not None:
        first, last = halo.at_faces(c.dtype)
        lo_face, hi_face = halo.faces
        true_lo = 0.0 if lo_face is None else _face_plane(lo_face, d_lo, lo_cell, h)
        true_hi = 0.0 if hi_face is None else _face_plane(hi_face, d_hi, hi_cell, h)
        lo = first * true_lo + (1.0 - first) * lo
        hi = last * true_hi + (1.0 - last) * hi
    return [(ax, 0, lo), (ax, n - 1, hi)]


def add_plane(x, plane, ax, idx):
    """x with ``plane`` added to its plane ``idx`` along ``ax``, in place."""
    start = [0] * x.ndim
    start[ax] = idx
    return jax.lax.dynamic_update_slice(x, _slice(x, idx, idx + 1, ax) + plane, tuple(start))


def _add_boundary(out: Array, planes: list, scale, pinned: Array | None) -> Array:
    """out[plane] += scale·plane for each boundary plane, in place (XLA dynamic-update-slice)."""
    for ax, idx, plane in planes:
        if pinned is not None:
            plane = jnp.where(_slice(pinned[None], idx, idx + 1, ax), 0.0, plane)
        out = add_plane(out, scale * plane, ax, idx)
    return out


def _prepare(c, D, decay, source=None):
    nd = c.ndim
    D = _per_channel(jnp.asarray(D, c.dtype), nd)
    decay = _per_channel(jnp.asarray(decay, c.dtype), nd)
    return D, decay, (None if source is None else jnp.asarray(source, c.dtype))


def diffusion_rate(
    c: Array,
    spacing: tuple[float, float, float],
    D: Array,
    decay: Array,
    bc: tuple,
    pinned: Array | None = None,
    source: Array | None = None,
) -> Array:
    """Right-hand side ∂c/∂t = ∇·(D∇c) − λc + S of the 7-point finite-volume scheme.

    c:       (F, X, Y, Z) fields.
    spacing: voxel size (hx, hy, hz) in um (Python floats).
    D:       diffusion coefficient in um²/min, shape (F,) or (F, X, Y, Z)
             (variable coefficient, averaged onto faces).
    decay:   λ in 1/min, shape (F,) or (F, X, Y, Z) (a per-voxel loss rate,
             e.g. uptake by cells, solved together with diffusion).
    bc:      three entries, one per axis: ``None`` (periodic) or
             ``(FaceBC lower, FaceBC upper)``.
    pinned:  optional (X, Y, Z) bool mask of voxels held at their value
             (Dirichlet nodes, as BioFVM's); their rate is zero.
    source:  optional S (field units per min), broadcastable to c.
    Returns an array like ``c``. Forward Euler with it is stable for
    dt ≤ 2/ρ (``euler_limit``) and keeps c ≥ 0 for dt ≤ 1 / (Σ_axes 3D/h² + λ)
    (the edge voxel of a Dirichlet face carries 3D/h² on its diagonal).
    """
    D, decay, source = _prepare(c, D, decay, source)
    rate = _bulk_rate(c, spacing, D, decay, source)
    if pinned is not None:
        rate = jnp.where(pinned, 0.0, rate)
    return _add_boundary(rate, _boundary_planes(c, spacing, D, bc), 1.0, pinned)


def diffusion_rate_reference(c, spacing, D, decay, bc, pinned=None, source=None):
    """Plain ghost-cell version of ``diffusion_rate`` (jnp.pad), for tests.

    Constant-per-channel D only. The ghost value reproduces each face flux:
    Dirichlet ghost = 2 v − c_edge, Neumann ghost = c_edge + q h / D.
    """
    nd = c.ndim
    D = _per_channel(D, nd)
    out = -_per_channel(decay, nd) * c + (0.0 if source is None else source)
    for axis, h in enumerate(spacing):
        ax = axis + 1
        n = c.shape[ax]
        if bc[axis] is None:
            p = jnp.concatenate([_slice(c, n - 1, n, ax), c, _slice(c, 0, 1, ax)], axis=ax)
        else:
            ghosts = []
            for face, edge in zip(bc[axis], (0, n - 1)):
                face = _closed(c) if face is None else face
                w, v, q = (_per_channel(x, nd) for x in face)
                ce = _slice(c, edge, edge + 1, ax)
                ghosts.append(w * (2 * v - ce) + (1 - w) * (ce + q * h / D))
            p = jnp.concatenate([ghosts[0], c, ghosts[1]], axis=ax)
        out = out + D * (_slice(p, 2, n + 2, ax) - 2 * c + _slice(p, 0, n, ax)) / h**2
    if pinned is not None:
        out = jnp.where(pinned, 0.0, out)
    return out


def spectral_radius(spacing, D, decay=0.0) -> float:
    """Upper bound of the 7-point operator's spectrum: Σ 4D/h² + λ (1/min)."""
    return float(sum(4.0 * D / h**2 for h in spacing) + decay)


def euler_limit(spacing, D, decay=0.0) -> float:
    """Largest stable forward-Euler step 2/ρ (min)."""
    return 2.0 / spectral_radius(spacing, D, decay)


def explicit_step(c, dt, spacing, D, decay, bc, pinned=None, source=None) -> Array:
    """Forward Euler c + dt·(∇·(D∇c) − λc + S) in one fused pass plus six boundary planes.

    Arguments as ``diffusion_rate``. First order; stable for dt ≤ ``euler_limit``.
    """
    D, decay, source = _prepare(c, D, decay, source)
    new = c + dt * _bulk_rate(c, spacing, D, decay, source)
    if pinned is not None:
        new = jnp.where(pinned, c, new)
    return _add_boundary(new, _boundary_planes(c, spacing, D, bc), dt, pinned)


def _fewest_stages(x: float, extra: int, smallest: int) -> int:
    """Fewest s ≥ ``smallest`` with s(s + 1) ≥ m, in closed form.

    m = 2(⌈x⌉ + 1) for RKL2 (``extra`` = 2) and ⌈x⌉ for RKL1 (``extra`` = 0); s(s + 1) is
    an integer, so rounding x up loses nothing. An integer square root makes it exact for
    any finite x and O(1): counting up from s = 2 took about √x iterations, and hung for
    a diffusion coefficient of 1e30.
    """
    if not math.isfinite(x):
        raise ValueError(f"RKL stages for dt·ρ = {x!r}: expected a finite step and spectral "
                         f"radius (a finite diffusion coefficient, decay and time step)")
    m = extra * (max(math.ceil(x), 0) + 1) if extra else max(math.ceil(x), 0)
    s = (math.isqrt(4 * m + 1) - 1) // 2  # largest s with s(s + 1) ≤ m
    while s * (s + 1) < m:
        s += 1
    return max(s, smallest)


def rkl2_stages(dt: float, rho: float) -> int:
    """Fewest RKL2 stages s ≥ 2 with dt·ρ ≤ (s² + s − 2)/2 (Meyer et al. 2014).

    (s² + s − 2)/2 ≥ x  ⇔  s(s + 1) ≥ 2(⌈x⌉ + 1), solved in closed form.
    """
    return _fewest_stages(dt * rho, 2, 2)


def rkl2_coefficients(stages: int) -> tuple[np.ndarray, float]:
    """(s − 1, 4) table of (μ_j, ν_j, μ̃_j, γ̃_j) for j = 2..s, and μ̃₁ = w₁/3.

    Meyer, Balsara & Aslam (2014), J. Comput. Phys. 257:594, eqs. (16)-(18).
    """
    s = stages
    if s < 2:
        raise ValueError(f"RKL2 needs at least 2 stages, got {s}")
    w1 = 4.0 / (s * s + s - 2.0)

    def b(j):
        return 1.0 / 3.0 if j < 2 else (j * j + j - 2.0) / (2.0 * j * (j + 1.0))

    rows = []
    for j in range(2, s + 1):
        mu = (2.0 * j - 1.0) / j * b(j) / b(j - 1)
        nu = -(j - 1.0) / j * b(j) / b(j - 2)
        rows.append((mu, nu, mu * w1, -(1.0 - b(j - 1)) * mu * w1))
    return np.array(rows), b(1) * w1


def rkl1_stages(dt: float, rho: float) -> int:
    """Fewest RKL1 stages s ≥ 1 with dt·ρ ≤ s² + s (Meyer et al. 2012), in closed form."""
    return _fewest_stages(dt * rho, 0, 1)


def rkl1_coefficients(stages: int) -> tuple[np.ndarray, float]:
    """(s − 1, 4) table of (μ_j, ν_j, μ̃_j, 0) for j = 2..s, and μ̃₁ = 2/(s² + s).

    Meyer, Balsara & Aslam (2012), MNRAS 422:2102, eq. (13).
    """
    s = stages
    w1 = 2.0 / (s * s + s)
    rows = [((2.0 * j - 1.0) / j, -(j - 1.0) / j, (2.0 * j - 1.0) / j * w1, 0.0)
            for j in range(2, s + 1)]
    return np.array(rows).reshape(-1, 4), w1


def _map_faces(bc, fn):
    """The boundary data with ``fn`` applied to every face that has data."""
    def axis(a):
        if isinstance(a, Halo):
            return Halo(a.name, a.count, axis(a.faces))
        return None if a is None else tuple(None if f is None else fn(f) for f in a)

    return tuple(axis(a) for a in bc)


def _stage_value(y_prev, y_prev2, c, f0, coef, D, decay, source, bc, dt, spacing, pinned,
                 second_order):
    """One RKL stage Y_j from (Y_{j−1}, Y_{j−2}, Y₀, f(Y₀)) and its row of coefficients."""
    mu, nu, mu_t, gamma_t = coef[0], coef[1], coef[2], coef[3]
    bulk = _bulk_rate(y_prev, spacing, D, decay, source)
    if pinned is not None:
        bulk = jnp.where(pinned, 0.0, bulk)
    y = mu * y_prev + nu * y_prev2 + (mu_t * dt) * bulk
    if second_order:
        y = y + (1.0 - mu - nu) * c + (gamma_t * dt) * f0
    y = _add_boundary(y, _boundary_planes(y_prev, spacing, D, bc), mu_t * dt, pinned)
    if pinned is not None:  # exact: μc + νc + (1 − μ − ν)c rounds
        y = jnp.where(pinned, c, y)
    return y


def _unbroadcast(x, shape):
    """Sum x down to ``shape``: the transpose of broadcasting ``shape`` to x's shape."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and x.shape[lead + i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape) if axes else x


def _face_cotangents(face, s_u, sd_u, sd_uc, h):
    """Cotangents of one face's (w, v, q) for the pairing Σ ue·plane, where
    plane = w·2D(v − Y)/h² + (1 − w)·q/h (``_boundary_planes``), from the sums over the
    face of ue, D·ue and D·ue·Y, per channel (F, 1, 1, 1)."""
    w, v, q = (_per_channel(jnp.asarray(x, s_u.dtype), s_u.ndim) for x in face)
    bars = (2.0 * (v * sd_u - sd_uc) / h**2 - q * s_u / h, w * 2.0 * sd_u / h**2,
            (1.0 - w) * s_u / h)

    def back(bar, leaf):  # to the leaf's shape: (F,) reshaped, or one value broadcast
        leaf = jnp.asarray(leaf)
        bar = bar.reshape(-1) if leaf.ndim == 1 else jnp.sum(bar).reshape(leaf.shape)
        return bar.astype(leaf.dtype)

    return FaceBC(*(back(b, x) for b, x in zip(bars, face)))


def _plane_sum(x):
    return jnp.sum(x, axis=(1, 2, 3), keepdims=True)


def _face_differences(x, ax, periodic):
    """x_{i+1} − x_i across each face along ``ax`` (n − 1 faces; n with the wrap)."""
    if periodic:
        return jnp.roll(x, -1, axis=ax) - x
    n = x.shape[ax]
    return _slice(x, 1, n, ax) - _slice(x, 0, n - 1, ax)


def _below_difference(x, ax, halo: Halo):
    """x_edge − x_nb across a slab's lower interface (0 on the first shard unless periodic)."""
    lo = _slice(x, 0, 1, ax)
    diff = lo - halo.from_below(_slice(x, x.shape[ax] - 1, x.shape[ax], ax))
    return diff if halo.faces is None else (1.0 - halo.at_faces(x.dtype)[0]) * diff


def _to_voxels(q, ax, periodic):
    """Each voxel's sum of the face values q on its two sides along ``ax``."""
    if periodic:
        return q + jnp.roll(q, 1, axis=ax)
    pad = [(0, 0)] * q.ndim
    lo, hi = list(pad), list(pad)
    lo[ax], hi[ax] = (0, 1), (1, 0)
    return jnp.pad(q, lo) + jnp.pad(q, hi)


def _stages_function(dt, spacing, second_order, table):
    """Stages 2..s of an RKL step from (Y₁, Y₀ = c, f(Y₀)), with a hand-written reverse
    rule for the whole chain of stages.

    A stage is affine in the states, and its operator A (7-point diffusion,
    decay, the Dirichlet faces' diagonal, periodic wraps) is symmetric; pinned
    voxels zero rows of it. The pullback of a stage's cotangent ȳ is therefore
    the stage's own fused stencil applied to u = ȳ off the pinned voxels:
    Ȳ_{j−1} = μu + A w (w = μ̃ dt u), Ȳ_{j−2} = νu, Ȳ₀ = (1 − μ − ν)u (+ ȳ on
    pinned voxels), f̄₀ = γ̃ dt u, A without its affine part (the boundary values
    and fluxes). With D one value per channel, A w = D·L₁w − λw, L₁ the operator
    at D = 1 without decay: one stencil a stage. The coefficients' cotangents
    are pairings of the w's with the stages' inputs Y_{j−1}, accumulated as
    fields over the stages and summed once: P_λ = Σ w·Y (λ̄ = −P_λ), P_S = Σ w
    (S̄), for D either P_D = Σ L₁w·Y (= Σ w·L₁Y: D̄ = ΣP_D, plus the Dirichlet
    faces' affine part) or, for a D that varies in space, per axis
    Σ Δw·ΔY across each face (each face's coefficient is the mean of its two
    voxels'); each face's boundary data from sums over it of P_S, D·P_S and
    D·P_λ. Reverse mode keeps each stage's input. Measured (issue 10): JAX's
    transpose of the stencil took twice as long for the state's cotangent
    (oxygen's 128-stage step at 32³, 2-core CPU: 50 against 23 ms, forward 9);
    a rule stage by stage, with the pairings summed at every stage and JAX's
    transpose for D, 162-177 ms for a step with every cotangent where this one
    takes 99-112 (5 channels, 38 stages, D per channel, 32³, forward 17-18 ms,
    in one run with a fit on both cores).
    """
    coefs = np.asarray(table)

    def chain(y1, c, f0, D, decay, source, bc, pinned, keep):
        def body(carry, coef):
            y_prev, y_prev2 = carry
            y = _stage_value(y_prev, y_prev2, c, f0, coef, D, decay, source, bc, dt, spacing,
                             pinned, second_order)
            return (y, y_prev), (y_prev if keep else None)

        (y, _), inputs = jax.lax.scan(body, (y1, c), jnp.asarray(coefs, c.dtype))
        return y, inputs

    # the pinned mask is an argument, not a closure: inside ``shard_map`` it is
    # each shard's traced slice, which a custom rule may not close over
    @jax.custom_vjp
    def run(y1, c, f0, D, decay, source, bc, pinned):
        return chain(y1, c, f0, D, decay, source, bc, pinned, False)[0]

    def forward(y1, c, f0, D, decay, source, bc, pinned):
        y, inputs = chain(y1, c, f0, D, decay, source, bc, pinned, True)
        return y, (inputs, c, D, decay, source, bc, pinned)

    def backward(res, g):
        inputs, c, D, decay, source, bc, pinned = res
        homogeneous = _map_faces(
            bc, lambda f: FaceBC(f.dirichlet, jnp.zeros_like(f.value), jnp.zeros_like(f.flux)))
        ones, zeros = jnp.ones_like(D), jnp.zeros_like(D)
        variable = any(n > 1 for n in D.shape[1:])
        periodic = [bc[a] is None for a in range(3)]
        halos = [(a + 1, bc[a]) for a in range(3) if isinstance(bc[a], Halo)]

        def body(carry, xs):
            a, b, c_bar, f0_bar, p_l, p_s, p_d, p_i = carry
            coef, y_prev = xs
            mu, nu, mu_t, gamma_t = coef[0], coef[1], coef[2], coef[3]
            u = a if pinned is None else jnp.where(pinned, 0.0, a)
            if pinned is not None:
                c_bar = c_bar + jnp.where(pinned, a, 0.0)
            if second_order:
                c_bar = c_bar + (1.0 - mu - nu) * u
                f0_bar = f0_bar + (gamma_t * dt) * u
            w = (mu_t * dt) * u
            if variable:  # Aw by the stencil; per axis, Σ Δw·ΔY across each face
                prev_bar = b + mu * u + diffusion_rate(w, spacing, D, decay, homogeneous)
                p_d = tuple(q + _face_differences(w, ax + 1, periodic[ax])
                            * _face_differences(y_prev, ax + 1, periodic[ax])
                            for ax, q in enumerate(p_d))
                # and across each slab's lower interface (the neighbour's upper plane)
                p_i = tuple(q + _below_difference(w, ax, halo) * _below_difference(y_prev, ax,
                                                                                   halo)
                            for q, (ax, halo) in zip(p_i, halos))
            else:  # L₁w once, L₁ symmetric: Aw = D·L₁w − λw, and Σ w·L₁Y = Σ L₁w·Y
                lw = diffusion_rate(w, spacing, ones, zeros, homogeneous)
                prev_bar = b + mu * u + D * lw - decay * w
                p_d = p_d + lw * y_prev
            return (prev_bar, nu * u, c_bar, f0_bar, p_l + w * y_prev, p_s + w, p_d, p_i), None

        zero = jnp.zeros_like(g)
        p_d = (tuple(jnp.zeros_like(_face_differences(g, ax + 1, periodic[ax]))
                     for ax in range(3)) if variable else zero)
        p_i = tuple(jnp.zeros_like(_slice(g, 0, 1, ax)) for ax, _ in halos) if variable else ()
        carry = (g, zero, zero, zero, zero, zero, p_d, p_i)
        (y1_bar, c0_bar, c_bar, f0_bar, p_l, p_s, p_d, p_i), _ = jax.lax.scan(
            body, carry, (jnp.asarray(coefs, g.dtype), inputs), reverse=True)
        if variable:  # each face's coefficient is the mean of its two voxels'
            D_bar = -0.5 * sum(_to_voxels(q, ax + 1, periodic[ax]) / h**2
                               for ax, (q, h) in enumerate(zip(p_d, spacing)))
            for q, (ax, halo) in zip(p_i, halos):  # to the interface's two voxels
                q = -0.5 * q / spacing[ax - 1] ** 2
                n = g.shape[ax]
                D_bar = add_plane(D_bar, q, ax, 0)
                D_bar = add_plane(D_bar, halo.from_above(q), ax, n - 1)
        else:
            D_bar = jnp.sum(p_d, axis=(1, 2, 3), keepdims=True)
        D_e = jnp.broadcast_to(D, g.shape)
        bc_bar = []
        for axis, h in enumerate(spacing):
            ax = axis + 1
            halo = bc[axis] if isinstance(bc[axis], Halo) else None
            true_faces = bc[axis] if halo is None else halo.faces
            if true_faces is None:
                bc_bar.append(None if halo is None else Halo(halo.name, halo.count, None))
                continue
            faces = []
            n = g.shape[ax]
            held = (1.0, 1.0) if halo is None else halo.at_faces(g.dtype)
            for face, edge, here in zip(true_faces, (0, n - 1), held):
                if face is None:
                    faces.append(None)
                    continue
                # a split axis's true face lies on one shard: the others' pairings are 0
                s_e, l_e, d_e = (_slice(x, edge, edge + 1, ax) for x in (p_s, p_l, D_e))
                s_e, l_e = here * s_e, here * l_e
                s_u = _plane_sum(s_e)
                face_bar = _face_cotangents(face, s_u, _plane_sum(d_e * s_e),
                                            _plane_sum(d_e * l_e), h)
                w, v = (_per_channel(jnp.asarray(x, g.dtype), 4) for x in face[:2])
                if variable:  # ∂/∂D_e of the plane w·2D_e(v − Y_e)/h², paired with w
                    D_bar = add_plane(D_bar, 2.0 * w * (v * s_e - l_e) / h**2, ax, edge)
                else:  # the plane's affine part (its diagonal is in L₁)
                    D_bar = D_bar + 2.0 * w * v * s_u / h**2
                faces.append(face_bar)
            bc_bar.append(tuple(faces) if halo is None else Halo(halo.name, halo.count,
                                                                 tuple(faces)))
        source_bar = None if source is None else _unbroadcast(p_s, jnp.shape(source))
        return (y1_bar, c_bar + c0_bar, f0_bar, _unbroadcast(D_bar, D.shape),
                _unbroadcast(-p_l, decay.shape), source_bar, tuple(bc_bar), None)

    run.defvjp(forward, backward)
    return run


def _sts_step(c, dt, spacing, D, decay, bc, pinned, source, table, mu1, second_order):
    D, decay, source = _prepare(c, D, decay, source)
    f0 = diffusion_rate(c, spacing, D, decay, bc, pinned, source)
    y1 = c + (mu1 * dt) * f0  # f0 is exactly 0 on pinned voxels
    if len(table) == 0:
        return y1
    return _stages_function(dt, spacing, second_order, table)(y1, c, f0, D, decay, source, bc,
                                                              pinned)


def rkl2_step(c, dt, spacing, D, decay, bc, stages: int, pinned=None, source=None) -> Array:
    """One step of the second-order Runge-Kutta-Legendre super-time-stepper.

    Y₀ = c;  Y₁ = Y₀ + μ̃₁ dt f(Y₀);
    Y_j = μ_j Y_{j−1} + ν_j Y_{j−2} + (1 − μ_j − ν_j) Y₀ + μ̃_j dt f(Y_{j−1}) + γ̃_j dt f(Y₀)
    with f = ``diffusion_rate`` (source S and a per-voxel decay included: a
    steady state of f is kept exactly); the result is Y_s. s stages advance
    dt = Δt_Euler·(s² + s − 2)/4, so s passes replace about s²/4 Euler steps.
    Second order in time for any s; stable for dt·ρ ≤ (s² + s − 2)/2.

    The stages run in a ``lax.scan``: unrolled, XLA fuses the chain of stencils
    into one loop nest and recomputes each stage's inputs (seconds per step at
    128³ on a CPU, measured); the scan keeps one fused pass per stage.
    """
    table, mu1 = rkl2_coefficients(stages)
    return _sts_step(c, dt, spacing, D, decay, bc, pinned, source, table, mu1, True)


def rkl1_step(c, dt, spacing, D, decay, bc, stages: int, pinned=None, source=None) -> Array:
    """One step of the first-order Runge-Kutta-Legendre super-time-stepper.

    Y_j = μ_j Y_{j−1} + ν_j Y_{j−2} + μ̃_j dt f(Y_{j−1}): each stage reads two
    arrays fewer than RKL2's and s stages cover dt·ρ ≤ s² + s (s = 6 where RKL2
    needs 8): 19 against 26 ms for one 128³ field on 2 CPU cores (measured,
    bench/RESULTS.md). First order: on a cosine mode along one axis it has
    about half the time error of backward Euler (our LOD) at the same dt, but
    on BioFVM's 3D cosine mode 1.4 times the error of LOD and of BioFVM's own
    solver (9.2e-3 against 6.4e-3 relative in L2 at dt = 0.01 min, measured side
    by side by ``bench/diffusion.py --biofvm``; ``test_cosine_3d_mode``). s = 1 is
    forward Euler.
    """
    table, mu1 = rkl1_coefficients(stages)
    return _sts_step(c, dt, spacing, D, decay, bc, pinned, source, table, mu1, False)


def rkl2_step_reference(c, dt, rate_fn: Callable[[Array], Array], stages: int) -> Array:
    """RKL2 written out stage by stage for any rate function (for tests; run eagerly)."""
    table, mu1 = rkl2_coefficients(stages)
    f0 = rate_fn(c)
    y_prev2, y_prev = c, c + mu1 * dt * f0
    for mu, nu, mu_t, gamma_t in table:
        y = mu * y_prev + nu * y_prev2 + (1 - mu - nu) * c + mu_t * dt * rate_fn(y_prev)
        y_prev2, y_prev = y_prev, y + gamma_t * dt * f0
    return y_prev
