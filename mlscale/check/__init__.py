"""Exercise checkers: each runs a learner's function on awkward cases against a
reference and returns a :class:`CheckResult` (``.passed``, what failed, a hint)."""
from . import solutions  # noqa: F401
from .collectives import ring_all_reduce  # noqa: F401
from .core import CheckResult, hint, solution  # noqa: F401
from .train import data_parallel_step  # noqa: F401
from .cluster import hierarchical_all_reduce  # noqa: F401,E402
from .parallel import gpipe_schedule, row_parallel_forward  # noqa: F401,E402
from .decentralized import gossip_step, metropolis_weights  # noqa: F401,E402
from .averaging import model_averaging  # noqa: F401,E402
from .ps import ssp_admission  # noqa: F401,E402
from .compress import topk_error_feedback  # noqa: F401,E402
from .federated import fedavg, pairwise_mask  # noqa: F401,E402
from .transformer import mesh_coordinates, sp_reduce_scatter  # noqa: F401,E402
from .alltoall import pairwise_all_to_all  # noqa: F401,E402
from .schedules import interleaved_order  # noqa: F401,E402
from .online_softmax import online_softmax_merge  # noqa: F401,E402
