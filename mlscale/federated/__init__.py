"""Federated learning (McMahan et al. 2017): a server and many clients that keep their data.

    from mlscale import data, nn, federated as fl
    X, y, X_test, y_test = data.load_digits()
    parts = fl.partition("label_shards", y, num_clients=100)      # McMahan's non-IID split
    cfg = fl.FedConfig(num_rounds=50, fraction=0.1, epochs=5, batch_size=10, lr=0.1)
    hist = fl.fit(lambda: nn.MLP([64, 10], seed=0), X, y, parts, X_test, y_test, cfg)
    hist.accuracy, hist.bytes, hist.clocks                        # per round

Aggregation rules are pure functions on ``list[(arrays, num_examples)]`` (Flower's
aggregate.py): ``fedavg`` (and ``fedavg_reference``), ``mean``; robust: ``median``,
``trimmed_mean``, ``krum``/``multi_krum``; private: ``dp_fedavg``, ``clip_update``;
secure: ``secure_sum`` (Bonawitz et al. 2017 pairwise masks, Shamir dropout recovery).

==================  =========================================================
module              what
==================  =========================================================
aggregate           fedavg (fused weighted_sum) and its NumPy reference
robust              coordinate median, trimmed mean, Krum, multi-Krum
secure, shamir      fixed point, DH key agreement, PRG masks, secret sharing
privacy             DP-FedAvg: clipping and the Gaussian mechanism
sampling            client sampling (C), partitions (iid, label_shards, dirichlet)
client              ClientUpdate: E epochs of batch-B SGD, FedProx's mu
server              the run on a Communicator (rank 0 server, ranks 1..K clients)
reference           the same algorithm as a plain loop (the oracle)
==================  =========================================================
"""
from .aggregate import fedavg, fedavg_reference, mean  # noqa: F401
from .client import local_update  # noqa: F401
from .config import AGGREGATORS, FedConfig, FedHistory  # noqa: F401
from .privacy import clip_update, dp_fedavg, gaussian_noise, update_norm  # noqa: F401
from .reference import run_reference  # noqa: F401
from .robust import (  # noqa: F401
    krum,
    krum_scores,
    krum_scores_reference,
    krum_select,
    median,
    multi_krum,
    trimmed_mean,
)
from .sampling import PARTITIONS, clients_per_round, partition, sample_clients  # noqa: F401
from .secure import FixedPoint, SecureSum, secure_sum  # noqa: F401
from .server import bytes_per_round, fit, program  # noqa: F401

__all__ = ["fedavg", "fedavg_reference", "mean", "median", "trimmed_mean", "krum", "multi_krum",
           "krum_select", "krum_scores", "krum_scores_reference", "dp_fedavg", "clip_update",
           "update_norm", "gaussian_noise", "FixedPoint", "secure_sum", "SecureSum", "sample_clients",
           "clients_per_round", "partition", "PARTITIONS", "local_update", "FedConfig", "FedHistory",
           "AGGREGATORS", "fit", "program", "run_reference", "bytes_per_round"]
