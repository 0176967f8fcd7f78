"""Decentralized learning: no server, no all-reduce; every rank talks to its neighbors.

- :mod:`.topology`: ring, 2-D torus, complete, star, exponential graphs (Ying et al. 2021),
  Erdos-Renyi, directed rings; neighbor lists and adjacency.
- :mod:`.mixing`: mixing matrices (Metropolis-Hastings, Metropolis, uniform, lazy),
  their validation, and how fast they average: rho(W - 11^T/p), the spectral gap,
  rounds to eps (Xiao and Boyd 2004).
- :mod:`.gossip`: gossip averaging on a Communicator, neighbors only (and the naive
  all-gather oracle).
- :mod:`.push_sum`: averaging on directed graphs (Kempe et al. 2003).
- :mod:`.plot`: topologies and consensus curves drawn with matplotlib.

D-PSGD (Lian et al. 2017), gossip inside the training loop, is
:class:`mlscale.train.gossip.DPSGD`.
"""
from .gossip import Gossip, gossip, gossip_naive, gossip_round  # noqa: F401
from .mixing import (  # noqa: F401
    RULES,
    consensus_errors,
    consensus_rate,
    lazy,
    metropolis,
    metropolis_hastings,
    mixing_matrix,
    period_matrix,
    push_sum_weights,
    rounds_to_eps,
    spectral_gap,
    topology_rate,
    uniform,
    validate_mixing_matrix,
)
from .push_sum import push_sum  # noqa: F401
from .topology import (  # noqa: F401
    TOPOLOGIES,
    Topology,
    complete,
    directed_ring,
    erdos_renyi,
    exponential,
    from_edges,
    make_topology,
    one_peer_exponential,
    ring,
    star,
    torus,
)
