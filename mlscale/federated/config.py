"""What a federated run is asked to do (``FedConfig``) and what it records (``FedHistory``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .client import check_local
from .sampling import check_fraction
from .secure import FixedPoint

AGGREGATORS = ("fedavg", "mean", "median", "trimmed_mean", "krum", "multi_krum")


@dataclass
class FedConfig:
    """One federated training run (names as in McMahan et al. 2017).

    num_rounds   communication rounds (the server stops early once ``target`` is reached)
    fraction     C, the fraction of clients sampled per round, in (0, 1]
    epochs       E, local epochs; batch_size B (None: B = infinity); E=1, B=None is FedSGD
    lr           the clients' SGD learning rate; server_lr scales the aggregated update
    mu           FedProx's proximal coefficient (None: plain FedAvg; 0 gives the same bits)
    aggregator   "fedavg" (weighted by num_examples), "mean", "median", "trimmed_mean"
                 (trim), "krum" / "multi_krum" (f, m), or a function results -> update
    secure       pairwise-masked secure aggregation (fedavg / DP only); fixed_point its encoding
    dp_clip, dp_noise   DP-FedAvg: clip each update to S = dp_clip, add N(0, (z S)^2), z = dp_noise
    dropout      probability that a sampled client vanishes before sending its update
    byzantine    {client id: attack(update, rng) -> update}: clients that lie
    target       stop at this test accuracy (rounds to target); seed: every random choice
    impl         the kernels' impl (SGD step, FedAvg's weighted sum); "auto" takes NumPy for
                 course-sized models and numba for large ones (mlscale.ops.resolve_impl)
    """

    num_rounds: int = 50
    fraction: float = 0.1
    epochs: int = 1
    batch_size: int | None = None
    lr: float = 0.1
    mu: float | None = None
    aggregator: object = "fedavg"
    trim: float | int = 0.1
    f: int = 1
    m: int = 1
    server_lr: float = 1.0
    secure: bool = False
    fixed_point: FixedPoint = field(default_factory=FixedPoint)
    dp_clip: float | None = None
    dp_noise: float = 0.0
    dropout: float = 0.0
    byzantine: dict = field(default_factory=dict)
    target: float | None = None
    seed: int = 0
    impl: str = "auto"

    def validate(self, num_clients):
        if isinstance(self.num_rounds, bool) or int(self.num_rounds) != self.num_rounds or self.num_rounds < 1:
            raise ValueError(f"FedConfig: num_rounds={self.num_rounds!r} must be an integer >= 1")
        check_fraction(self.fraction)
        check_local(self.epochs, self.batch_size, self.lr, self.mu)
        if not callable(self.aggregator) and self.aggregator not in AGGREGATORS:
            raise ValueError(f"FedConfig: aggregator={self.aggregator!r}; use one of {AGGREGATORS} "
                             "or a function results -> update")
        linear = self.aggregator in ("fedavg", "mean")
        if self.secure and not linear:
            raise ValueError(f"FedConfig: secure=True reveals only the SUM of the updates, so the server "
                             f"cannot run aggregator={self.aggregator!r} (it needs each update); use 'fedavg'")
        if self.dp_clip is not None and not linear:
            raise ValueError("FedConfig: DP-FedAvg (dp_clip) averages clipped updates; use aggregator='fedavg'")
        if self.dp_clip is None and self.dp_noise:
            raise ValueError("FedConfig: dp_noise needs dp_clip (the noise std is dp_noise * dp_clip)")
        from .sampling import clients_per_round

        m = clients_per_round(num_clients, self.fraction)
        if self.secure and m < 2:
            raise ValueError(f"FedConfig: secure=True with {m} client per round: the sum of one update IS the "
                             "update; sample at least 2 (raise fraction or num_clients)")
        if self.aggregator in ("krum", "multi_krum") and not 2 * self.f + 2 < m:
            raise ValueError(f"FedConfig: Krum needs 2f + 2 < n per round (Blanchard et al. 2017); f={self.f} "
                             f"with {m} clients per round. Sample at least {2 * self.f + 3} or lower f")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"FedConfig: dropout={self.dropout!r} must be in [0, 1)")
        bad = [k for k in self.byzantine if not (isinstance(k, (int, np.integer)) and 0 <= k < num_clients)]
        if bad:
            raise ValueError(f"FedConfig: byzantine names clients {bad}; clients are 0..{num_clients - 1}")
        if self.target is not None and not 0 < self.target <= 1:
            raise ValueError(f"FedConfig: target={self.target!r} is a test accuracy in (0, 1]")
        return self

    @property
    def name(self):
        b = "inf" if self.batch_size is None else self.batch_size
        base = "FedSGD" if self.epochs == 1 and self.batch_size is None else f"FedAvg E={self.epochs} B={b}"
        if self.mu is not None and self.mu > 0:
            base = f"FedProx mu={self.mu} E={self.epochs} B={b}"
        return base


@dataclass
class FedHistory:
    """Per round, on the server: test accuracy, the clients that took part, virtual time,
    and (filled in from the trace by ``fit``) the bytes every message of the round moved."""

    accuracy: list = field(default_factory=list)
    sampled: list = field(default_factory=list)  # client ids per round
    dropped: list = field(default_factory=list)
    clocks: list = field(default_factory=list)  # server's comm.clock at the end of each round
    bytes: list = field(default_factory=list)  # per round, every rank's messages
    params: np.ndarray | None = None  # the final global params
    target: float | None = None
    time: float | None = None  # the run's virtual time (fit)
    trace: object = None  # the sim trace (fit)

    @property
    def rounds(self):
        return len(self.accuracy)

    def rounds_to(self, target):
        """The first round (1-based) whose test accuracy is >= target, or None."""
        for r, a in enumerate(self.accuracy):
            if a >= target:
                return r + 1
        return None
