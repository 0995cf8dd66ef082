"""The analysis passes, in the order the pipeline runs them.

Adding a pass means writing its module and listing it here; no other pass changes.
"""

from .calibrate import CalibrateFolds, CollectStatistics
from .chains import FindChains
from .explain import ExplainUnfolded
from .fold import PlanFolds
from .layers import FindLayers
from .lowrank import LowRank, Spectra

# run on each graph; the calibration passes do nothing without options.calibrate
DEFAULT_PASSES = (FindLayers(), FindChains(), PlanFolds(), CollectStatistics(), CalibrateFolds())
GLOBAL_PASSES = (LowRank(), ExplainUnfolded())  # run once over all graphs, in this order
SPECTRUM_PASSES = (*DEFAULT_PASSES, Spectra())  # what analyze runs with --spectrum

__all__ = ["DEFAULT_PASSES", "GLOBAL_PASSES", "SPECTRUM_PASSES"]
