"""Time stepping: one reaction evaluation per step, then transport.

The model is a pure function ``reaction(fields, params, t) -> Rates`` read
once per step, at the state at its start. Its terms enter each field the way
that keeps the step stable, positive and (where mass only moves) conservative:

    solutes   ∂c/∂t = ∇·(D f∇c) − (λ + L)c + P is advanced with the transport
              solver, the reaction's loss L (uptake) and production P frozen
              over the step: stiff linear uptake (oxygen, k = 10/min) is
              solved together with diffusion, not split from it, so a steady
              state of the frozen problem is kept exactly at any dt;
    cells and c ← c·e^{−L dt} + P·(1 − e^{−L dt})/L + inflows: the exact
    matrix     solution of ∂c/∂t = P − L c with P, L frozen (c ≥ 0 for any dt);
              a conversion (``Rates.move``) carries exactly what its source
              lost to the destination, so conversions conserve volume to
              round-off. Cells then move (upwind, volume-filling transport
              with motility, drift potential Φ and the model's factors).

First order in dt for the coupling between fields (measured in tests); the
stiff solute operator itself keeps the order of its solver. Transport advances
each species with the cheapest stable method for dt, chosen once, at build
time, from the species' design (upper-bound) diffusion coefficient, decay and
uptake bound, so any value within the bounds runs on the same plan:

    euler     forward Euler, when dt ≤ 2/ρ (ρ = Σ 4D/h² + λ + uptake): one pass;
    rkl2      Runge-Kutta-Legendre super-time-stepping with the fewest stages
              s for which dt·ρ ≤ 0.95 (s² + s − 2)/2: s passes instead of about
              s²/4 Euler steps (oxygen at D = 1e5, h = 20, dt = 0.01: s = 8);
    rkl1      the first-order variant (dt·ρ ≤ 0.95 (s² + s); s = 6 there),
              about 25% cheaper than RKL2 (measured); on request only;
    implicit  backward Euler, solved per channel by conjugate gradients with a
              multigrid V-cycle as preconditioner, warm-started from the
              previous step (``kernels.implicit_step``): unconditionally
              stable, its fixed point the discrete steady state at any dt,
              its cost set by the iterations (none to a few once a solute is
              near its quasi-steady state), not by D·dt/h²; chosen when more
              than ``max_stages`` RKL2 stages would be needed, or requested;
    lod       BioFVM's locally one-dimensional backward-Euler sweeps
              (boundaries inside the solve), on request: unconditionally
              stable, but its steady state is biased by the splitting;
    static    species with neither diffusion nor decay: only their reaction;
    cell      the upwind volume-filling transport of all "cell" species
              together, forward Euler sub-steps within its positivity limit;
              a crowding pressure Φ(φ) (``Stepper.pressure``) is re-evaluated
              from the current densities at every sub-step, and its stiffness
              bound enters the sub-step count: frozen over a whole step of
              minutes, the pressure-driven flux is an explicit step far beyond
              its stability limit and its linearisation grows by 1.6 per step
              (measured on a 12³ organoid at dt = 2 min), which is what made
              reverse-mode gradients of long runs wrong.

Species sharing a method (and stage count) are advanced together as one
block, so that XLA fuses them into one pass per stage; the time loop carries
the blocks apart and stacks them only at save points. The reaction reads the
fields by name from the blocks (``FieldView``), so nothing is restacked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import jax
import jax.numpy as jnp
import numpy as np

from . import kernels as K
from ._grid import Grid, Neumann
from ._species import SpeciesTable

STS_SAFETY = 0.95
# RKL2 stages beyond which "auto" solves implicitly. Measured at 64³ on 2 CPU
# cores: an implicit oxygen step on a consuming-ball test costs about 6 RKL2
# stages where the warm start already meets the tolerance (3.3 against 85 ms for
# 159 stages); in the tissue's first steps, with 7 to 8 CG iterations, oxygen and
# lactate took 192 ms together, about 180 stages each. 40 lies between, and keeps
# the cytokines (24 stages at dt = 2 min, h = 20 um) on second-order RKL2.
MAX_STAGES = 40


@dataclass(frozen=True)
class Group:
    """Channels advanced together by one transport method."""

    method: str  # "static" | "euler" | "rkl1" | "rkl2" | "implicit" | "lod" | "cell"
    channels: tuple[int, ...]
    stages: int = 1  # RKL stages, or cell sub-steps
    variable: bool = False  # coefficient scaled per voxel by the reaction's factors


def plan_transport(grid: Grid, table: SpeciesTable, dt: float, max_stages: int = MAX_STAGES,
                   cell_speed: float = 0.0, pressure_stiffness: float = 0.0):
    """Choose each species' transport method for step dt; returns a tuple of Groups.

    cell_speed: cap (um/min) on the drift speed of cells; pressure_stiffness:
    bound on dΦ/dφ of the crowding pressure (um²/min). With the largest
    motility they give the number of cell-transport sub-steps
    (``kernels.transport_limit``).
    """
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"time step must be a positive number of minutes, got {dt!r}")
    keyed: dict[tuple, list[int]] = {}
    boundaries = table.boundaries(grid)
    cells = table.channels("cell")
    for i, s in enumerate(table):
        if s.kind == "cell":
            continue
        rho = K.spectral_radius(grid.spacing, s.diffusion, s.decay + s.uptake)
        method = s.method
        inflow = any(isinstance(b, Neumann) and b.flux for b in boundaries[i])
        if s.diffusion == 0 and s.decay == 0 and not inflow:
            method = "static"  # nothing to transport: only the reaction
        elif method == "auto":
            if dt * rho <= 2.0:
                method = "euler"
            elif K.rkl2_stages(dt, rho / STS_SAFETY) <= max_stages:
                method = "rkl2"
            else:
                method = "implicit"
        if method == "euler" and dt * rho > 2.0:
            raise ValueError(
                f"species {s.name!r}: forward Euler is unstable at dt = {dt} min "
                f"(limit {2.0 / rho:.3g} min); use method 'auto', 'rkl2' or 'implicit'"
            )
        stages = 1
        if method == "rkl2":
            stages = K.rkl2_stages(dt, rho / STS_SAFETY)
        elif method == "rkl1":
            stages = K.rkl1_stages(dt, rho / STS_SAFETY)
        variable = s.variable_diffusion and method != "static"
        keyed.setdefault((method, stages, variable), []).append(i)
    groups = [Group(m, tuple(ch), st, v) for (m, st, v), ch in keyed.items()]
    if cells:
        mu = max(table.species[i].diffusion for i in cells)
        limit = (K.transport_limit(grid.spacing, mu, cell_speed, pressure_stiffness)
                 if mu or cell_speed or pressure_stiffness else math.inf)
        groups.append(Group("cell", cells, max(1, math.ceil(dt / limit)), True))
    return tuple(sorted(groups, key=lambda g: g.channels[0]))


def _take(c, channels):
    lo, hi = channels[0], channels[-1] + 1
    if channels == tuple(range(lo, hi)):
        return jax.lax.slice_in_dim(c, lo, hi, axis=0)
    return c[np.asarray(channels)]


def _decay_and_gain(loss, h):
    """e^{−Lh} and (1 − e^{−Lh})/L, the latter accurate and finite as L → 0."""
    lh = loss * h
    safe = jnp.where(lh > 1e-4, loss, 1.0)
    gain = jnp.where(lh > 1e-4, -jnp.expm1(-lh) / safe, h * (1.0 - 0.5 * lh))
    return jnp.exp(-lh), gain


class Rates:
    """The reaction terms of one evaluation, collected by field name.

    Built inside the traced reaction function; every array is (X, Y, Z) or
    broadcastable to it, in the field's units per minute.

    produce(name, P)      ∂c/∂t += P            (P ≥ 0: secretion, division)
    lose(name, L)         ∂c/∂t −= L·c          (L ≥ 0, per capita: death, uptake)
    move(src, dst, r)     ∂src/∂t −= r·src, ∂dst/∂t += r·src (conversion; cells
                          and matrix only; conserved to round-off)
    scale_mobility(name, f)  diffusion coefficient or motility × f (0 < f ≤ 1);
                          only for species declared ``variable_diffusion``
    drift(name, Φ)        cells drift with v = −∇Φ (Φ in um²/min), summed
    carry(Ψ)              every cell species moves with the bulk velocity u = −∇Ψ
                          (Ψ (X, Y, Z); not limited by room: the whole mixture moves)
    far_field(R)          the medium beyond the domain is still out to radius R (um,
                          a scalar) and holds the outer face's value beyond it
                          (``RadialStepper`` only: its outer face meets the exact
                          steady resistance of that spherical shell; a Cartesian
                          box's faces hold their values where they are)
    """

    def __init__(self):
        self.production: dict = {}
        self.loss: dict = {}
        self.flows: list = []
        self.mobility: dict = {}
        self.potential: dict = {}
        self.carrier = None
        self.far = None

    @staticmethod
    def _add(store, name, value, combine=jnp.add):
        store[name] = value if name not in store else combine(store[name], value)

    def produce(self, name, amount):
        self._add(self.production, name, amount)
        return self

    def lose(self, name, rate):
        self._add(self.loss, name, rate)
        return self

    def move(self, src, dst, rate):
        self._add(self.loss, src, rate)
        self.flows.append((src, dst, rate))
        return self

    def scale_mobility(self, name, factor):
        self._add(self.mobility, name, factor, jnp.multiply)
        return self

    def drift(self, name, potential):
        self._add(self.potential, name, potential)
        return self

    def carry(self, potential):
        self.carrier = potential if self.carrier is None else self.carrier + potential
        return self

    def far_field(self, radius):
        if self.far is not None:
            raise ValueError("Rates.far_field: set once per evaluation")
        self.far = radius
        return self


class FieldView:
    """Read access to the split fields by species name: ``view["oxygen"]`` is (X, Y, Z)."""

    def __init__(self, stepper, blocks):
        self._where = stepper._where
        self._blocks = blocks

    def __getitem__(self, name):
        try:
            g, j = self._where[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields are {tuple(self._where)}") from None
        return self._blocks[g][j]


class StaticArray:
    """A NumPy array inside a static, hashable object (hash of its bytes)."""

    def __init__(self, array, dtype=None):
        self.array = np.array(array, dtype=dtype)
        self.array.setflags(write=False)
        self._hash = hash((self.array.shape, self.array.dtype.str, self.array.tobytes()))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, StaticArray) and self._hash == other._hash
                and np.array_equal(self.array, other.array))


@dataclass(frozen=True)
class Stepper:
    """Pure single-step map for a grid, a species table and a step dt (min).

    reaction: optional ``reaction(fields, params, t) -> Rates``, pointwise,
    reading fields by name (``FieldView``). ``params`` is the pytree from
    ``SpeciesTable.default_params`` plus whatever the reaction reads.
    cell_speed: cap on the cells' drift speed (um/min), see ``plan_transport``.
    pressure: optional ``pressure(phi, params) -> Φ`` (um²/min) of the total
    cell fraction φ (X, Y, Z): every cell species drifts down its gradient,
    v = −∇Φ, on top of the reaction's drift potentials; it is re-evaluated at
    every cell sub-step, and ``pressure_stiffness`` (a bound on dΦ/dφ over the
    parameter bounds) sizes the sub-steps.
    pinned: optional (X, Y, Z) bool mask (static) of voxels where every solute
    is held at its current value (a medium or vessel region: BioFVM's
    Dirichlet nodes), exactly, in every method.
    params["bulk_level"] (F,), when present, is the level each implicit solve
    is taken relative to (an organoid's well-mixed medium; ``implicit_step``'s
    reference). A reaction's ``Rates.carry`` potential moves every cell
    species with the bulk velocity at each sub-step, beside its drift.
    Faces declared no-flux (``Neumann(0)``) for every species of a group are
    closed statically: no boundary plane is computed for them (fewer kernels
    per RKL stage), so ``params["boundary_flux"]`` is not read there; declare
    a nonzero ``Neumann`` flux for a face whose flux a run should set.
    """

    grid: Grid
    table: SpeciesTable
    dt: float
    reaction: Callable | None = None
    max_stages: int = MAX_STAGES
    cell_speed: float = 0.0
    pressure: Callable | None = None
    pressure_stiffness: float = 0.0
    pinned: StaticArray | None = None
    groups: tuple = field(init=False)
    _where: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "dt", float(self.dt))
        if self.pinned is not None and not isinstance(self.pinned, StaticArray):
            object.__setattr__(self, "pinned", StaticArray(self.pinned, bool))
        if self.pinned is not None and self.pinned.array.shape != self.grid.shape:
            raise ValueError(f"Stepper.pinned: expected shape {self.grid.shape}, "
                             f"got {self.pinned.array.shape}")
        object.__setattr__(self, "groups", self._plan())
        names = self.table.names
        where = {names[ch]: (gi, j)
                 for gi, g in enumerate(self.groups) for j, ch in enumerate(g.channels)}
        object.__setattr__(self, "_where", where)

    def _plan(self) -> tuple:
        """The transport groups (``plan_transport``); a geometry with its own operators
        (``RadialStepper``) plans its own."""
        return plan_transport(self.grid, self.table, self.dt, self.max_stages, self.cell_speed,
                              self.pressure_stiffness)

    def describe(self) -> list[str]:
        """One line per group: method, stages and species names."""
        names = self.table.names
        return [
            f"{g.method}{'' if g.stages == 1 else f' x{g.stages}'}: "
            + ", ".join(names[i] for i in g.channels)
            for g in self.groups
        ]

    def place(self, fields):
        """``fields`` laid out on the devices as the step returns them (here: as given)."""
        return fields

    # -- layout: the scan carries one block per group ----------------------
    def split(self, c) -> tuple:
        """Stacked fields -> one block per group (the layout carried by the scan).

        Rebuilding the stacked array every step costs a full extra pass
        (12 ms of 47 at 128³ x 8 on 2 CPU cores, measured), so the time loop
        keeps the groups apart and stacks them only at save points.
        """
        return tuple(_take(c, g.channels) for g in self.groups)

    def merge(self, blocks) -> jax.Array:
        """Inverse of ``split``."""
        order = [ch for g in self.groups for ch in g.channels]
        stacked = jnp.concatenate(blocks, axis=0)
        if order == list(range(len(order))):
            return stacked
        return stacked[np.argsort(order)]

    # -- pieces of a step ----------------------------------------------------
    def _stack(self, g: Group, store: dict, fill: float, like):
        """The group's channels from a name -> array store; None if none is there."""
        names = [self.table.names[ch] for ch in g.channels]
        if not any(n in store for n in names):
            return None
        shape = like.shape[1:]  # one slab's on a split grid (``SlabStepper``)
        return jnp.stack([
            jnp.broadcast_to(jnp.asarray(store[n], like.dtype), shape) if n in store
            else jnp.full(shape, fill, like.dtype) for n in names
        ])

    def _face_bc(self, params, channels):
        """Per-axis face data; a face declared no-flux for every channel is closed statically
        (None: no boundary plane), so its ``params["boundary_flux"]`` is not read."""
        mask = self.table.dirichlet_mask(self.grid)[:, np.asarray(channels)]
        closed = self._closed_faces()[:, np.asarray(channels)].all(axis=1)
        bv = params["boundary_value"][:, np.asarray(channels)]
        bf = params["boundary_flux"][:, np.asarray(channels)]
        faces = [None if closed[k] else K.FaceBC(jnp.asarray(mask[k], bv.dtype), bv[k], bf[k])
                 for k in range(6)]
        return tuple(
            None if self.grid.periodic[a] else (faces[2 * a], faces[2 * a + 1]) for a in range(3)
        )

    def _closed_faces(self) -> np.ndarray:
        """(6, F): True where a species' face is declared Neumann with zero flux."""
        bnd = self.table.boundaries(self.grid)
        return np.array([[isinstance(b[k], Neumann) and not b[k].flux for b in bnd]
                         for k in range(6)])

    def _coefficient(self, g: Group, params, rates, c):
        D = params["diffusion"][np.asarray(g.channels)]
        if g.variable and rates is not None:
            factor = self._stack(g, rates.mobility, 1.0, c)
            if factor is not None:
                return D.reshape(D.shape + (1,) * len(self.grid.shape)) * factor
        return D

    def _transport_solutes(self, g: Group, c, params, rates, pinned):
        """Diffusion, decay and the frozen reaction terms of one group over dt."""
        sp = self.grid.spacing
        D = self._coefficient(g, params, rates, c)
        lam = params["decay"][np.asarray(g.channels)]
        source = None
        if rates is not None:
            loss = self._stack(g, rates.loss, 0.0, c)
            if loss is not None:
                lam = lam[:, None, None, None] + loss
            source = self._stack(g, rates.production, 0.0, c)
        bc = self._face_bc(params, g.channels)
        if g.method == "implicit":
            level = params.get("bulk_level")
            ref = None if level is None else level[np.asarray(g.channels)]
            return K.implicit_step(c, self.dt, sp, D, lam, bc, pinned, source, reference=ref)
        if g.method == "lod":
            return K.lod_step(c, self.dt, sp, D, lam, bc, pinned, source)
        if g.method == "euler":
            return K.explicit_step(c, self.dt, sp, D, lam, bc, pinned, source)
        step = K.rkl1_step if g.method == "rkl1" else K.rkl2_step
        return step(c, self.dt, sp, D, lam, bc, g.stages, pinned, source)

    def _react_in_place(self, g: Group, c, rates, inflow):
        """Exact update of ∂c/∂t = P − L·c (frozen) plus conversions into the group."""
        if rates is None:
            return c
        loss = self._stack(g, rates.loss, 0.0, c)
        production = self._stack(g, rates.production, 0.0, c)
        gained = self._stack(g, inflow, 0.0, c)
        if loss is not None:
            decay, gain = _decay_and_gain(loss, self.dt)
            c = c * decay + (0.0 if production is None else production * gain)
        elif production is not None:
            c = c + self.dt * production
        return c if gained is None else c + gained

    def _move_cells(self, g: Group, c, params, rates):
        D = self._coefficient(g, params, rates, c)
        if jnp.ndim(D) == 1:
            # one motility per population, spread over the grid here, once a step: as a
            # (F,) value broadcast inside the sub-steps' fused pass, XLA's CPU code ran 5
            # times slower (70 against 14 ms a sub-step, 64³ × 13 populations, measured)
            D = jnp.broadcast_to(D.reshape(D.shape + (1,) * (c.ndim - 1)),
                                 self._motility_shape(c))
        frozen = None if rates is None else self._stack(g, rates.potential, 0.0, c)
        carrier = None if rates is None else rates.carrier
        h = self.dt / g.stages
        moved = frozen is not None or carrier is not None or self.pressure is not None
        speed = self.cell_speed if moved else None

        ones = jnp.ones(c.shape[0], c.dtype)

        def substep(c, _):
            # a contraction, not jnp.sum(c, axis=0): XLA's CPU reduction over
            # the outer axis took 34 ms for 12 fields at 64³ (1 ms as a dot),
            # and the dot's result is not recomputed inside the transport pass
            phi = jnp.tensordot(ones, c, axes=1)
            potential = frozen
            if self.pressure is not None:
                # the two potentials go in apart: summed here, the transport
                # pass ran 3 times slower (85 against 29 ms per sub-step, 64³)
                push = self.pressure(phi, params)
                potential = push if frozen is None else (frozen, push)
            return c + h * self._cell_rate(c, D, potential, 1.0 - phi, speed, carrier), None

        # a scan, not an unrolled loop: one copy of the pass in the program
        # (unrolled, 17 sub-steps made a gradient take minutes to compile);
        # reverse mode keeps each sub-step's input and recomputes the pass
        substep = jax.checkpoint(substep, prevent_cse=False)
        return jax.lax.scan(substep, c, None, length=g.stages)[0]

    def _motility_shape(self, c):
        """The shape a per-population motility is spread to for ``_cell_rate``."""
        return c.shape

    def _cell_rate(self, c, D, potential, room, speed, carrier):
        """∂ρ/∂t of the cell transport on this grid (``kernels.cell_transport_rate``)."""
        return K.cell_transport_rate(c, self.grid.spacing, D, potential, room,
                                     self.grid.periodic, speed, carrier)

    def _inflows(self, view, rates):
        """Per destination, what each conversion carried over in this step."""
        names = self.table.names
        inflow: dict = {}
        if rates is None:
            return inflow
        gains: dict = {}
        for src, dst, rate in rates.flows:
            for n in (src, dst):
                if self.table.species[names.index(n)].kind == "solute":
                    raise ValueError(f"Rates.move({src!r}, {dst!r}): conversions are for cells "
                                     f"and matrix; {n!r} is a solute (use produce/lose)")
            if src not in gains:  # one source feeds several conversions
                gains[src] = view[src] * _decay_and_gain(rates.loss[src], self.dt)[1]
            Rates._add(inflow, dst, gains[src] * rate)
        return inflow

    def step_blocks(self, blocks, params, t=0.0):
        """One step on the split layout (see the module docstring)."""
        rates = None
        view = FieldView(self, blocks)
        if self.reaction is not None:
            rates = self.reaction(view, params, t)
        inflow = self._inflows(view, rates)
        pinned = self._pinned()
        out = []
        done = rates  # what the first group's transport must wait for (``_in_order``)
        for g, c in zip(self.groups, blocks):
            c = self._in_order(c, done)
            if g.method in ("static", "cell"):
                c = self._react_in_place(g, c, rates, inflow)
                if g.method == "cell":
                    c = self._move_cells(g, c, params, rates)
            else:
                c = self._transport_solutes(g, c, params, rates, pinned)
            out.append(c)
            done = c
        return tuple(out)

    def _in_order(self, c, done):
        """``c`` for the next group's transport (``SlabStepper``: once ``done`` exists)."""
        return c

    def _pinned(self):
        return None if self.pinned is None else jnp.asarray(self.pinned.array)

    def step(self, c, params, t=0.0):
        """One step: reaction terms read at the start, then every group over dt."""
        return self.merge(self.step_blocks(self.split(c), params, t))


SPLIT_METHODS = ("static", "euler", "rkl1", "rkl2", "implicit", "cell")  # all but LOD


@dataclass(frozen=True)
class SlabStepper(Stepper):
    """A ``Stepper`` whose grid is split along x into equal slabs, one per device.

    Each step runs under ``jax.shard_map`` over a one-axis mesh ("x") of
    ``devices``: every device advances its own slab (X / n, Y, Z), and the
    stencils' faces between slabs read the neighbour's edge plane through
    ``jax.lax.ppermute`` (``kernels.Halo``), one plane each way per stencil
    pass; only the first and the last slab apply the x faces' boundary
    conditions. The plan (methods, stages) is the whole grid's, so a split run
    takes the same steps as one device and agrees with it to round-off.

    Outside the step (the time loop's guard, saving, events) the fields are
    ordinary global arrays, laid out over the devices by the step's output:
    XLA partitions those parts itself. Parameters with the grid's shape in
    their last three axes (per-voxel values) are split with the fields; the
    rest are replicated. The cells' transport reads its neighbours' edge
    planes the same way, on slabs grown by one plane each side
    (``_cell_rate``). The implicit solve's conjugate gradients sum over all
    slabs (one all-reduce of a number per channel) and its multigrid levels
    stay split while the slabs pair up along x; the first level that does not
    is gathered (small for slabs a power of two wide) and cycled whole on every device
    (``kernels.implicit_step``). The reaction sees one slab: a reaction with
    an ``on_slabs(count)`` method (the niche model's) is given the one it
    returns; any other must be pointwise. Not split (refused): LOD, whose
    sweeps run along whole lines.
    """

    devices: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        n = len(self.devices)
        if n < 1:
            raise ValueError("SlabStepper: give at least one device")
        if self.grid.shape[0] % n:
            raise ValueError(f"SlabStepper: {self.grid.shape[0]} voxels along x do not split "
                             f"into {n} equal slabs; use a multiple of {n}")
        if hasattr(self.reaction, "on_slabs"):
            object.__setattr__(self, "reaction", self.reaction.on_slabs(n))
        names = self.table.names
        for g in self.groups:
            if g.method not in SPLIT_METHODS:
                raise ValueError(
                    f"SlabStepper: the {g.method!r} transport of "
                    f"{', '.join(names[i] for i in g.channels)} is not split over devices "
                    f"(split: {', '.join(SPLIT_METHODS)}); run it on one device")

    @property
    def mesh(self):
        return jax.sharding.Mesh(np.array(self.devices), ("x",))

    def _spec(self, x):
        if np.ndim(x) >= 3 and tuple(np.shape(x)[-3:]) == tuple(self.grid.shape):
            return jax.sharding.PartitionSpec(*([None] * (np.ndim(x) - 3)), "x")
        return jax.sharding.PartitionSpec()

    def place(self, fields):
        """``fields`` (channels, X, Y, Z) in slabs over the devices, as the step returns them:
        a run's first call is then compiled for the layout of every later one. In a job
        of several processes each process gives the whole array and keeps its slabs."""
        if jax.process_count() > 1:
            fields = np.asarray(fields)
        return jax.device_put(fields, jax.sharding.NamedSharding(self.mesh, self._spec(fields)))

    def _face_bc(self, params, channels):
        bc = super()._face_bc(params, channels)
        return (K.Halo("x", len(self.devices), bc[0]),) + bc[1:]

    def _pinned(self):
        if self.pinned is None:
            return None
        whole = jnp.asarray(self.pinned.array)
        width = self.grid.shape[0] // len(self.devices)
        start = jax.lax.axis_index("x") * width
        return jax.lax.dynamic_slice_in_dim(whole, start, width, axis=0)

    def _halo(self):
        return K.Halo("x", len(self.devices), None if self.grid.periodic[0] else (None, None))

    def _in_order(self, c, done):
        """One group's exchanges after the last one's (and the reaction's): ``kernels.after``
        (docs/devices.md, "The order of the exchanges")."""
        if len(self.devices) == 1:
            return c
        done = vars(done) if isinstance(done, Rates) else done
        arrays = [x for x in jax.tree_util.tree_leaves(done)
                  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)]
        return K.after(c, arrays) if arrays else c

    def _motility_shape(self, c):
        """The grown slab's: a motility the same everywhere needs no edge planes from the
        neighbours (``_cell_rate`` grows only arrays of the slab's own shape)."""
        return c.shape[:1] + (c.shape[1] + 2,) + c.shape[2:]

    def _cell_rate(self, c, D, potential, room, speed, carrier):
        """The cells' transport on the slab grown by its neighbours' edge planes (one each
        side: a face's transfer reads the two voxels beside it), cut back to the slab.
        On a true (closed) x face the grown plane holds zeros from no neighbour; whatever
        crossed into it is given back to the edge voxel: the transport conserves, so
        that exactly cancels the transfer through a face that must be closed."""
        halo, local = self._halo(), c.shape[1:]

        def grow(x):
            if x is None or jnp.ndim(x) < 3 or tuple(jnp.shape(x)[-3:]) != local:
                return x
            return halo.grown(x, 1, jnp.ndim(x) - 3)

        parts = potential if isinstance(potential, tuple) else (potential,)
        grown = tuple(grow(x) for x in parts)
        rate = K.cell_transport_rate(grow(c), self.grid.spacing, grow(D),
                                     grown if isinstance(potential, tuple) else grown[0],
                                     grow(room), (False,) + tuple(self.grid.periodic[1:]),
                                     speed, grow(carrier))
        n = local[0]
        inner = jax.lax.slice_in_dim(rate, 1, n + 1, axis=1)
        if self.grid.periodic[0]:
            return inner
        first, last = halo.at_faces(c.dtype)
        inner = K.add_plane(inner, first * jax.lax.slice_in_dim(rate, 0, 1, axis=1), 1, 0)
        return K.add_plane(inner, last * jax.lax.slice_in_dim(rate, n + 1, n + 2, axis=1), 1,
                           n - 1)

    def step_blocks(self, blocks, params, t=0.0):
        """One step, each device on its slab (``Stepper.step_blocks`` under ``shard_map``)."""
        slab = jax.sharding.PartitionSpec(None, "x")
        specs = jax.tree_util.tree_map(self._spec, params)
        local = jax.shard_map(
            lambda b, p, t: Stepper.step_blocks(self, b, p, t), mesh=self.mesh,
            in_specs=((slab,) * len(blocks), specs, jax.sharding.PartitionSpec()),
            out_specs=(slab,) * len(blocks), check_vma=False)
        return local(tuple(blocks), params, jnp.asarray(t))


def split_grid(stepper: Stepper, devices) -> SlabStepper:
    """``stepper`` with its grid split along x over ``devices`` (``SlabStepper``)."""
    if type(stepper) not in (Stepper, SlabStepper):
        raise ValueError(f"split_grid: a {type(stepper).__name__} cannot be split over devices "
                         f"(only a Cartesian Stepper)")
    kept = {f.name: getattr(stepper, f.name) for f in fields(stepper)
            if f.init and f.name != "devices"}
    return SlabStepper(**kept, devices=tuple(devices))


def plan_radial(grid, table: SpeciesTable, dt: float, cell_speed: float = 0.0,
                pressure_stiffness: float = 0.0):
    """Transport groups on a ``RadialGrid``: every solute that diffuses or decays in one
    "radial" group (solved exactly, any dt), species with neither "static", the
    cells one "cell" group with sub-steps from ``kernels.radial_transport_limit``."""
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"time step must be a positive number of minutes, got {dt!r}")
    static, solutes, variable = [], [], False
    for i, s in enumerate(table):
        if s.kind == "cell":
            continue
        if s.diffusion == 0 and s.decay == 0:
            static.append(i)
        else:
            solutes.append(i)
            variable = variable or s.variable_diffusion
    groups = []
    if static:
        groups.append(Group("static", tuple(static)))
    if solutes:
        groups.append(Group("radial", tuple(solutes), 1, variable))
    cells = table.channels("cell")
    if cells:
        mu = max(table.species[i].diffusion for i in cells)
        limit = (K.radial_transport_limit(grid.spacing[0], grid.n, mu, cell_speed,
                                          pressure_stiffness)
                 if mu or cell_speed or pressure_stiffness else math.inf)
        groups.append(Group("cell", cells, max(1, math.ceil(dt / limit)), True))
    return tuple(sorted(groups, key=lambda g: g.channels[0]))


@dataclass(frozen=True)
class RadialStepper(Stepper):
    """The ``Stepper``'s step on a ``RadialGrid`` (spherical shells; kernels/_radial.py).

    The same step: the reaction read once at the step's start, cells and
    matrix by the exact update of ``_react_in_place``, then the cells' upwind
    volume-filling transport in sub-steps (pressure re-evaluated at each,
    drift potentials and the carrier Ψ as in 3D), now through the shells'
    faces; every solute that diffuses or decays in one backward-Euler step
    of ∇·(D∇c) − (λ + L)c + P with L, P frozen, solved exactly (one
    tridiagonal system per solute, ``kernels.radial_diffusion_step``): what
    the 3D "implicit" method solves to a tolerance. Its fixed point is the
    discrete steady state at any dt.

    Faces: the centre is closed by the geometry; the outer face is closed
    for cells and, for solutes, holds the value ``params["boundary_value"]``
    reads on its last row ((6, F) as the organoid's ``inputs`` give it, or
    (F,)): the medium, on the face or, where the reaction sets
    ``Rates.far_field(R)``, beyond still medium out to radius R (the
    kernel's ``far``). Without "boundary_value" the outer face is closed.
    ``pinned`` voxels are not supported.
    """

    def __post_init__(self):
        if self.pinned is not None:
            raise ValueError("RadialStepper: pinned voxels are not supported")
        super().__post_init__()

    def _plan(self) -> tuple:
        return plan_radial(self.grid, self.table, self.dt, self.cell_speed,
                           self.pressure_stiffness)

    def _transport_solutes(self, g: Group, c, params, rates, pinned):
        channels = np.asarray(g.channels)
        D = self._coefficient(g, params, rates, c)
        lam = params["decay"][channels]
        source = None
        if rates is not None:
            loss = self._stack(g, rates.loss, 0.0, c)
            if loss is not None:
                lam = lam[:, None] + loss
            source = self._stack(g, rates.production, 0.0, c)
        outer = None
        if "boundary_value" in params:
            level = jnp.asarray(params["boundary_value"])
            outer = level.reshape((-1, level.shape[-1]))[-1][channels]
        far = None if rates is None or rates.far is None else (rates.far, params["decay"][channels])
        return K.radial_diffusion_step(c, self.dt, self.grid.spacing[0], D, lam, outer, source,
                                       far)

    def _cell_rate(self, c, D, potential, room, speed, carrier):
        return K.radial_cell_transport_rate(c, self.grid.spacing[0], D, potential, room, speed,
                                            carrier)
