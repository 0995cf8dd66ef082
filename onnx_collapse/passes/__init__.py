"""The analysis passes, in the order the pipeline runs them.

Adding a pass means writing its module and listing it here; no other pass changes.
"""

from .chains import FindChains
from .fold import PlanFolds
from .linear import FindLinearLayers
from .lowrank import LowRank

DEFAULT_PASSES = (FindLinearLayers(), FindChains(), PlanFolds())  # run on each graph
GLOBAL_PASSES = (LowRank(),)  # run once over all graphs

__all__ = ["DEFAULT_PASSES", "GLOBAL_PASSES"]
