"""Distributed training: one loop, pluggable synchronizers.

They are points on one spectrum: how often ranks talk, with whom, and what they send.

======================  =============  ==================  ====================
synchronizer            how often      with whom           what
======================  =============  ==================  ====================
DataParallel            every step     everyone (ring)     gradients
ParameterServer         every step     the servers         gradients / params
LocalSGD(H)             every H steps  everyone            parameters
DPSGD                   every step     neighbors (gossip)  parameters
CompressedDataParallel  every step     everyone            compressed gradients
======================  =============  ==================  ====================
"""
from .common import History, broadcast_params, check_same_model, model_checksum  # noqa: F401
from .compressed import CompressedDataParallel  # noqa: F401
from .data_parallel import DataParallel  # noqa: F401
from .gossip import DPSGD  # noqa: F401
from .inference import accuracy, predict  # noqa: F401
from .local_sgd import LocalSGD, model_disagreement  # noqa: F401
from .loop import train  # noqa: F401
from .param_server import ParameterServer, clock_lag, ssp_may_proceed  # noqa: F401
