"""tmesim: differentiable GPU reaction-diffusion simulator of the cancer-stem-cell niche."""

from ._grid import Dirichlet as Dirichlet
from ._grid import Grid as Grid
from ._grid import Neumann as Neumann
from ._grid import Periodic as Periodic
from ._species import Species as Species
from ._species import SpeciesTable as SpeciesTable
from ._stepper import FieldView as FieldView
from ._stepper import Rates as Rates
from ._stepper import Stepper as Stepper
from ._stepper import plan_transport as plan_transport
from ._stepper import simulate as simulate

__version__ = "0.1.0"
