"""The computational domain: a static, hashable uniform Cartesian grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FACES = ("x-", "x+", "y-", "y+", "z-", "z+")


@dataclass(frozen=True)
class Neumann:
    """Prescribed inward flux through a face (field units x um / min); 0 is no-flux."""

    flux: float = 0.0


@dataclass(frozen=True)
class Dirichlet:
    """Prescribed value on a face (field units), e.g. 38 mmHg oxygen at the medium."""

    value: float


@dataclass(frozen=True)
class Periodic:
    """The axis wraps around; both of its faces must be Periodic."""


Boundary = Neumann | Dirichlet | Periodic


def _six(boundary, what: str) -> tuple:
    """Normalise one boundary or a six-face sequence/mapping to a tuple in FACES order."""
    if isinstance(boundary, (Neumann, Dirichlet, Periodic)):
        faces = (boundary,) * 6
    elif isinstance(boundary, dict):
        unknown = set(boundary) - set(FACES)
        if unknown:
            raise ValueError(f"{what}: unknown face(s) {sorted(unknown)}; faces are {FACES}")
        faces = tuple(boundary.get(f, Neumann()) for f in FACES)
    else:
        faces = tuple(boundary)
        if len(faces) != 6:
            raise ValueError(f"{what}: expected 6 faces {FACES}, got {len(faces)}")
    for f, b in zip(FACES, faces):
        if not isinstance(b, (Neumann, Dirichlet, Periodic)):
            raise TypeError(f"{what}: face {f} must be Neumann, Dirichlet or Periodic, got {b!r}")
    for axis in range(3):
        lo, hi = faces[2 * axis], faces[2 * axis + 1]
        if isinstance(lo, Periodic) != isinstance(hi, Periodic):
            raise ValueError(
                f"{what}: axis {'xyz'[axis]} is periodic on one face only ({lo!r}, {hi!r})"
            )
    return faces


@dataclass(frozen=True)
class Grid:
    """Uniform cell-centred grid; usable as a static jit argument.

    shape:    voxels per axis (nx, ny, nz), each ≥ 3.
    spacing:  voxel size in um, one number or (hx, hy, hz). PhysiCell's default
              is 20 um.
    boundary: default boundary of every species on each face, one Boundary or
              six in the order x-, x+, y-, y+, z-, z+ (or a {face: Boundary}
              mapping; missing faces are no-flux). A species may override the
              non-periodic faces; periodicity is a property of the domain.
    Voxel i along an axis spans [i h, (i+1) h]; its centre is (i + 1/2) h.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (20.0, 20.0, 20.0)
    boundary: tuple = (Neumann(),) * 6

    axis_names = ("x", "y", "z")

    def __post_init__(self):
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or any(n < 3 for n in shape):
            raise ValueError(f"Grid.shape must be three integers ≥ 3, got {self.shape!r}")
        spacing = self.spacing
        if isinstance(spacing, (int, float)):
            spacing = (spacing,) * 3
        spacing = tuple(float(h) for h in spacing)
        if len(spacing) != 3 or not all(math.isfinite(h) and h > 0 for h in spacing):
            raise ValueError(f"Grid.spacing must be positive um, got {self.spacing!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "boundary", _six(self.boundary, "Grid.boundary"))

    @property
    def periodic(self) -> tuple[bool, bool, bool]:
        return tuple(isinstance(self.boundary[2 * a], Periodic) for a in range(3))

    @property
    def extent(self) -> tuple[float, float, float]:
        """Domain size in um."""
        return tuple(n * h for n, h in zip(self.shape, self.spacing))

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def centers(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates (um) along one axis."""
        return (np.arange(self.shape[axis]) + 0.5) * self.spacing[axis]

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (um) as three (X, Y, Z) arrays."""
        return np.meshgrid(*(self.centers(a) for a in range(3)), indexing="ij")

    def distance_from_center(self) -> np.ndarray:
        """Distance (um) of each voxel centre from the domain centre, shape (X, Y, Z)."""
        x, y, z = self.mesh()
        cx, cy, cz = (e / 2 for e in self.extent)
        return np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)


@dataclass(frozen=True)
class RadialGrid:
    """Spherical shells about a body's centre: a radially symmetric domain (static, hashable).

    n: shells (≥ 3); spacing: shell thickness h in um (one number, or a
    1-tuple). Shell i spans [i h, (i+1) h]; its centre radius is (i + 1/2) h,
    its volume 4π((i+1)³ − i³)h³/3. The centre face is closed by the geometry
    (area 0); the outer face, r = n h, is where the domain ends (an
    organoid's medium). ``shape`` is (n,), ``spacing`` (h,), so the code that
    reads a grid's shape or its smallest spacing reads this one alike.
    """

    n: int
    spacing: tuple[float] = (20.0,)

    def __post_init__(self):
        n = int(self.n)
        if n < 3:
            raise ValueError(f"RadialGrid.n must be an integer ≥ 3, got {self.n!r}")
        h = self.spacing
        h = (float(h),) if isinstance(h, (int, float)) else tuple(float(x) for x in h)
        if len(h) != 1 or not (math.isfinite(h[0]) and h[0] > 0):
            raise ValueError(f"RadialGrid.spacing must be one positive length in um, "
                             f"got {self.spacing!r}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "spacing", h)

    axis_names = ("r",)
    periodic = (False,)

    @property
    def shape(self) -> tuple[int]:
        return (self.n,)

    @property
    def extent(self) -> tuple[float]:
        """Outer radius (um)."""
        return (self.n * self.spacing[0],)

    def centers(self, axis: int = 0) -> np.ndarray:
        """Shell-centre radii (um), (n,)."""
        return (np.arange(self.n) + 0.5) * self.spacing[0]

    def faces(self) -> np.ndarray:
        """Face radii (um), (n + 1,): 0, h, …, n h."""
        return np.arange(self.n + 1) * self.spacing[0]

    def face_areas(self) -> np.ndarray:
        """4π r² of every face (um²), (n + 1,)."""
        return 4.0 * math.pi * self.faces() ** 2

    def volumes(self) -> np.ndarray:
        """Shell volumes 4π(r_{i+1}³ − r_i³)/3 (um³), (n,)."""
        r = self.faces()
        return 4.0 * math.pi * (r[1:] ** 3 - r[:-1] ** 3) / 3.0
