"""Numerical kernels of tmesim: arrays in, arrays out.

Installed as ``tmesim.kernels``; nothing here imports the rest of tmesim or
knows about species, units or files. Fields are stacked ``c[channel, x, y, z]``.
"""

from ._diffusion import (
    FaceBC as FaceBC,
)
from ._diffusion import (
    Halo as Halo,
)
from ._diffusion import (
    add_plane as add_plane,
)
from ._diffusion import (
    after as after,
)
from ._diffusion import (
    diffusion_rate as diffusion_rate,
)
from ._diffusion import (
    diffusion_rate_reference as diffusion_rate_reference,
)
from ._diffusion import (
    euler_limit as euler_limit,
)
from ._diffusion import (
    explicit_step as explicit_step,
)
from ._diffusion import (
    rkl1_coefficients as rkl1_coefficients,
)
from ._diffusion import (
    rkl1_stages as rkl1_stages,
)
from ._diffusion import (
    rkl1_step as rkl1_step,
)
from ._diffusion import (
    rkl2_coefficients as rkl2_coefficients,
)
from ._diffusion import (
    rkl2_stages as rkl2_stages,
)
from ._diffusion import (
    rkl2_step as rkl2_step,
)
from ._diffusion import (
    rkl2_step_reference as rkl2_step_reference,
)
from ._diffusion import (
    spectral_radius as spectral_radius,
)
from ._implicit import lod_step as lod_step
from ._multigrid import implicit_step as implicit_step
from ._implicit import thomas as thomas
from ._implicit import thomas_cyclic as thomas_cyclic
from ._transport import cell_transport_rate as cell_transport_rate
from ._transport import transport_limit as transport_limit
from ._radial import radial_cell_transport_rate as radial_cell_transport_rate
from ._radial import radial_diffusion_rate as radial_diffusion_rate
from ._radial import radial_diffusion_step as radial_diffusion_step
from ._radial import radial_transport_limit as radial_transport_limit
from ._radial import shell_geometry as shell_geometry
from ._transport import face_transfer as face_transfer
