"""Species table: names, kinds and transport data mapped to channels of one array."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ._grid import FACES, Dirichlet, Grid, Neumann, Periodic, _six

KINDS = ("solute", "cell", "matrix")
METHODS = ("auto", "euler", "rkl1", "rkl2", "implicit", "lod")


@dataclass(frozen=True)
class Species:
    """One field of the model, one channel of ``fields[channel, x, y, z]``.

    name:      unique identifier, e.g. "oxygen".
    kind:      "solute" (diffuses and decays: oxygen, cytokines, drugs),
               "cell" (volume fraction moved by the upwind cell transport with
               volume exclusion), "matrix" (does not move: ECM).
    diffusion: um²/min; for cells, the random motility μ. Also the design
               value from which the time-stepping plan is chosen: a run may
               use a smaller value, not a larger one.
    decay:     1/min, first-order loss everywhere.
    boundary:  None (use the grid's) or one Boundary / six faces overriding the
               grid's non-periodic faces. Cells ignore it: cells never cross
               the boundary (no-flux) unless the axis is periodic.
    units:     unit of the field's values ("mmHg", "nM", "volume fraction").
    initial:   uniform initial value.
    method:    "auto" (forward Euler where stable, second-order RKL2
               super-time-stepping up to ``Stepper.max_stages`` stages, else
               implicit), "euler", "rkl1" (first-order super-time-stepping,
               about 25% cheaper than RKL2), "rkl2", "implicit" (backward
               Euler solved by multigrid-preconditioned CG: exact steady
               state, cost independent of D·dt/h²) or "lod" (BioFVM's
               locally one-dimensional sweeps). Solutes and matrix only.
    uptake:    1/min, the largest loss rate the reaction can add (the niche
               model's oxygen: ``_model.loss_bounds``); the step plan allows for it. A larger
               run-time uptake may make a forward-Euler species unstable.
    variable_diffusion: the reaction scales this species' diffusion (or, for
               cells, motility) per voxel (``Rates.scale_mobility``), e.g. the
               ECM barrier; such species get a variable-coefficient pass.
    source:    where the default D, decay and boundary values come from.
    """

    name: str
    kind: str = "solute"
    diffusion: float = 0.0
    decay: float = 0.0
    boundary: object = None
    units: str = ""
    initial: float = 0.0
    method: str = "auto"
    uptake: float = 0.0
    variable_diffusion: bool = False
    source: str = ""

    def __post_init__(self):
        where = f"species {self.name!r}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"{where}: name must be an identifier")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.method not in METHODS:
            raise ValueError(f"{where}: method must be one of {METHODS}, got {self.method!r}")
        for key in ("diffusion", "decay", "uptake"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{where}: {key} must be a finite number ≥ 0, got {v!r}")
        if self.kind == "matrix" and self.diffusion != 0:
            raise ValueError(f"{where}: a matrix species does not diffuse (diffusion = 0)")
        if self.boundary is not None:
            object.__setattr__(self, "boundary", _six(self.boundary, where))


@dataclass(frozen=True)
class SpeciesTable:
    """Ordered species; channel i of the field array is ``species[i]``."""

    species: tuple[Species, ...]

    def __post_init__(self):
        species = tuple(self.species)
        names = [s.name for s in species]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"species table: duplicate names {sorted(dup)}")
        if not species:
            raise ValueError("species table: at least one species is needed")
        object.__setattr__(self, "species", species)

    def __len__(self) -> int:
        return len(self.species)

    def __iter__(self):
        return iter(self.species)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.species)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no species {name!r}; species are {self.names}") from None

    def channels(self, kind: str) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.species) if s.kind == kind)

    def boundaries(self, grid: Grid) -> tuple[tuple, ...]:
        """Per species, its six resolved faces (cells: no-flux unless periodic)."""
        out = []
        for s in self.species:
            faces = []
            for k, g in enumerate(grid.boundary):
                own = s.boundary[k] if s.boundary is not None else g
                if isinstance(g, Periodic):
                    own = g
                elif isinstance(own, Periodic):
                    raise ValueError(
                        f"species {s.name!r}: face {FACES[k]} is periodic but the grid's is not"
                    )
                if s.kind != "solute" and not isinstance(own, Periodic):
                    own = Neumann()
                faces.append(own)
            out.append(tuple(faces))
        return tuple(out)

    def default_params(self, grid: Grid, dtype=jnp.float32) -> dict:
        """Transport parameters as a pytree of arrays (differentiable leaves).

        diffusion (F,) um²/min, decay (F,) 1/min, boundary_value (6, F) and
        boundary_flux (6, F): the Dirichlet values and Neumann fluxes per face.
        Which faces are Dirichlet is static (from the table and grid).
        """
        bnd = self.boundaries(grid)
        value = [[b[k].value if isinstance(b[k], Dirichlet) else 0.0 for b in bnd]
                 for k in range(6)]
        flux = [[b[k].flux if isinstance(b[k], Neumann) else 0.0 for b in bnd] for k in range(6)]
        return {
            "diffusion": jnp.asarray([s.diffusion for s in self.species], dtype),
            "decay": jnp.asarray([s.decay for s in self.species], dtype),
            "boundary_value": jnp.asarray(value, dtype),
            "boundary_flux": jnp.asarray(flux, dtype),
        }

    def dirichlet_mask(self, grid: Grid) -> np.ndarray:
        """(6, F) array, 1.0 where a face is Dirichlet for a species (static)."""
        bnd = self.boundaries(grid)
        return np.array([[float(isinstance(b[k], Dirichlet)) for b in bnd] for k in range(6)])

    def initial_fields(self, grid: Grid, dtype=jnp.float32):
        """Uniform initial state, shape (F, X, Y, Z)."""
        init = jnp.asarray([s.initial for s in self.species], dtype)
        return jnp.broadcast_to(init[:, None, None, None], (len(self),) + grid.shape)
