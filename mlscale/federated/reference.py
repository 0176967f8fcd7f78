"""The federated algorithm as a plain loop over clients, no Communicator: the oracle the
comm run (``server.fit``) is tested against, bit for bit, and a quick way to experiment.
Secure aggregation is replaced by what it must compute: the exact fixed-point sum."""
from __future__ import annotations

import numpy as np

from .client import batch_seed, local_update
from .config import FedHistory
from .sampling import sample_clients
from .server import aggregate, check_run, client_vector, dropped_clients, finish_secure


def run_reference(model_fn, X, y, parts, X_test, y_test, cfg):
    check_run(X, y, parts, cfg)
    K = len(parts)
    server, worker = model_fn(), model_fn()
    params = server.params.copy()
    hist = FedHistory(target=cfg.target)
    for round in range(cfg.num_rounds):
        sampled = sample_clients(K, cfg.fraction, round, cfg.seed)
        dropped = dropped_clients(cfg, round, sampled)
        results = []
        for k in sampled:
            k = int(k)
            idx = parts[k]
            update, n = local_update(worker, params, X[idx], y[idx], cfg.epochs, cfg.batch_size, cfg.lr,
                                     cfg.mu, seed=batch_seed(cfg.seed, round, k), impl=cfg.impl)
            if k in cfg.byzantine:
                update = np.asarray(cfg.byzantine[k](update, np.random.default_rng([cfg.seed, round, k])),
                                    dtype=update.dtype)
            if k not in dropped:
                results.append((update, n))
        if cfg.secure:
            fp = cfg.fixed_point
            enc = [fp.encode(client_vector(cfg, u, n), len(sampled)) for u, n in results]
            total = fp.decode(np.sum(np.stack(enc), axis=0, dtype=fp.dtype))
            agg = finish_secure(cfg, total, round, params.dtype)
        else:
            agg = aggregate(cfg, results, round)
        params = params + np.asarray(cfg.server_lr * agg, dtype=params.dtype)
        server.params[...] = params
        hist.accuracy.append(server.accuracy(X_test, y_test))
        hist.sampled.append([int(k) for k in sampled])
        hist.dropped.append(dropped)
        if cfg.target is not None and hist.accuracy[-1] >= cfg.target:
            break
    hist.params = params
    return hist
