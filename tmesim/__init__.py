"""tmesim: differentiable GPU reaction-diffusion simulator of the cancer-stem-cell niche."""

from ._grid import Dirichlet as Dirichlet
from ._grid import Grid as Grid
from ._grid import Neumann as Neumann
from ._grid import Periodic as Periodic
from ._inspect import inspect_text as inspect_text
from ._inspect import plot_file as plot_file
from ._model import PROCESSES as PROCESSES
from ._model import Setup as Setup
from ._model import describe_model as describe_model
from ._model import niche_reaction as niche_reaction
from ._model import niche_species as niche_species
from ._model import organoid as organoid
from ._model import radiotherapy as radiotherapy
from ._model import tissue as tissue
from ._model import tumor_radius as tumor_radius
from ._parameters import PARAMETERS as PARAMETERS
from ._parameters import default_parameters as default_parameters
from ._run import RunError as RunError
from ._run import resume as resume
from ._run import run_scenario as run_scenario
from ._scenario import Scenario as Scenario
from ._scenario import ScenarioError as ScenarioError
from ._scenario import load_scenario as load_scenario
from ._scenario import scenario_from_text as scenario_from_text
from ._species import Species as Species
from ._species import SpeciesTable as SpeciesTable
from ._stepper import FieldView as FieldView
from ._stepper import Rates as Rates
from ._stepper import Stepper as Stepper
from ._stepper import plan_transport as plan_transport
from ._stepper import simulate as simulate

__version__ = "0.1.0"
