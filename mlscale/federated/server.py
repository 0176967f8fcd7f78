"""A federated run on a Communicator: rank 0 is the server, rank k + 1 is client k.

Each round (McMahan et al. 2017, Algorithm 1):

    server: sample m = max(floor(C K), 1) clients          (sampling.sample_clients)
            send each sampled client a control message [round, GO] and the params w_t
    client: E epochs of SGD with batch B on its shard (FedProx: + mu (w - w_t))
            send back (num_examples, update = w - w_t)    [or SecAgg's masked vector]
    server: w_{t+1} = w_t + server_lr * aggregate(results), evaluate, record

A client that is not sampled simply waits in ``recv`` for its next control message,
so nothing deadlocks; after the last round every client gets [round, STOP]. On the
sim engine 100 clients are 101 micro-threads and cost little (tests time it);
``reference.run_reference`` is the same algorithm as a plain loop, the oracle.
"""
from __future__ import annotations

import numpy as np

from . import robust, secure_comm
from .aggregate import fedavg, mean
from .client import batch_seed, local_update
from .config import FedConfig, FedHistory
from .privacy import clip_update, gaussian_noise
from .sampling import sample_clients
from .secure import default_threshold

TAG_CTRL, TAG_PARAMS, TAG_META, TAG_UPDATE = 1, 2, 3, 4
GO, STOP = 1, 0


def dropped_clients(cfg, round, sampled):
    """Which sampled clients vanish this round: each with probability cfg.dropout, seeded."""
    if not cfg.dropout:
        return []
    rng = np.random.default_rng([cfg.seed, round, 0xD0])
    return [int(k) for k, u in zip(sampled, rng.random(len(sampled))) if u < cfg.dropout]


def aggregate(cfg, results, round):
    """The server's rule on [(update, n_k)], plain (not secure)."""
    if cfg.dp_clip is not None:
        from .privacy import dp_fedavg

        return dp_fedavg(results, cfg.dp_clip, cfg.dp_noise, seed=noise_seed(cfg, round),
                         denominator=len(results))
    rule = cfg.aggregator
    if callable(rule):
        return rule(results)
    if rule == "fedavg":
        return fedavg(results, impl=cfg.impl)
    if rule == "mean":
        return mean(results)
    if rule == "median":
        return robust.median(results)
    if rule == "trimmed_mean":
        return robust.trimmed_mean(results, cfg.trim)
    return robust.krum(results, cfg.f, cfg.m if rule == "multi_krum" else 1)


def noise_seed(cfg, round):
    return [int(cfg.seed), int(round), 0xD9]


def client_vector(cfg, update, n):
    """What a client feeds to SecAgg: (n_k * update, n_k) for FedAvg; (clip(update), 1) with DP."""
    if cfg.dp_clip is not None:
        return np.concatenate([clip_update(update, cfg.dp_clip).astype(np.float64), [1.0]])
    w = float(n) if cfg.aggregator == "fedavg" else 1.0
    return np.concatenate([w * update.astype(np.float64), [w]])


def finish_secure(cfg, total, round, dtype):
    """From the decoded sum (sum of vectors, sum of weights) to the aggregated update."""
    s, weight = total[:-1], total[-1]
    if cfg.dp_clip is not None:
        s = s + gaussian_noise(s, cfg.dp_noise * cfg.dp_clip, noise_seed(cfg, round))
    return (s / weight).astype(dtype)


def client_program(comm, cfg, model, X, y):
    """Client k = comm.rank - 1: wait for work, train, report; until STOP."""
    from ..train.common import Stepper

    cid = comm.rank - 1
    stepper = Stepper(comm, model)
    attack = cfg.byzantine.get(cid)
    while True:
        round, flag = (int(v) for v in comm.recv(0, tag=TAG_CTRL))
        if flag == STOP:
            return stepper.compute_time
        with comm.label(f"fed/round={round}/client"):
            params = comm.recv(0, tag=TAG_PARAMS)
            update, n = local_update(model, params, X, y, cfg.epochs, cfg.batch_size, cfg.lr, cfg.mu,
                                     seed=batch_seed(cfg.seed, round, cid), stepper=stepper, impl=cfg.impl)
            if attack is not None:
                update = np.asarray(attack(update, np.random.default_rng([cfg.seed, round, cid])),
                                    dtype=update.dtype)
            sampled = sample_clients(cfg_num_clients(comm), cfg.fraction, round, cfg.seed)
            dropped = dropped_clients(cfg, round, sampled)
            if cfg.secure:
                secure_comm.client_round(comm, cid, sampled, client_vector(cfg, update, n), dropped,
                                         cfg.fixed_point, default_threshold(len(sampled)), cfg.seed, round)
            elif cid not in dropped:
                comm.send(np.array([n], dtype=np.int64), 0, tag=TAG_META)
                comm.send(update, 0, tag=TAG_UPDATE)


def cfg_num_clients(comm):
    return comm.world_size - 1


def server_program(comm, cfg, model, X_test, y_test, progress=False):
    """Rank 0: the rounds; returns a FedHistory."""
    from tqdm.auto import tqdm

    K = comm.world_size - 1
    hist = FedHistory(target=cfg.target)
    params = model.params.copy()
    bar = tqdm(range(cfg.num_rounds), desc=cfg.name, disable=not progress, leave=False)
    for round in bar:
        sampled = sample_clients(K, cfg.fraction, round, cfg.seed)
        dropped = dropped_clients(cfg, round, sampled)
        with comm.label(f"fed/round={round}/server"):
            for k in sampled:
                comm.send(np.array([round, GO], dtype=np.int64), int(k) + 1, tag=TAG_CTRL)
                comm.send(params, int(k) + 1, tag=TAG_PARAMS)
            if cfg.secure:
                total = secure_comm.server_round(comm, sampled, dropped, cfg.fixed_point,
                                                 default_threshold(len(sampled)))
                agg = finish_secure(cfg, total, round, params.dtype)
            else:
                results = []
                for k in sampled:
                    if int(k) in dropped:
                        continue
                    n = int(comm.recv(int(k) + 1, tag=TAG_META)[0])
                    results.append((comm.recv(int(k) + 1, tag=TAG_UPDATE), n))
                if not results:
                    raise ValueError(f"round {round}: every sampled client dropped out; lower dropout")
                agg = aggregate(cfg, results, round)
        params = params + np.asarray(cfg.server_lr * agg, dtype=params.dtype)
        model.params[...] = params
        hist.accuracy.append(model.accuracy(X_test, y_test))
        hist.sampled.append([int(k) for k in sampled])
        hist.dropped.append(dropped)
        hist.clocks.append(comm.clock)
        bar.set_postfix(acc=f"{hist.accuracy[-1]:.3f}")
        if cfg.target is not None and hist.accuracy[-1] >= cfg.target:
            break
    bar.close()
    for k in range(1, K + 1):
        comm.send(np.array([len(hist.accuracy), STOP], dtype=np.int64), k, tag=TAG_CTRL)
    hist.params = params
    return hist


def program(comm, model_fn, X, y, parts, X_test, y_test, cfg, progress=False):
    """The SPMD program every rank runs (``ms.launch(program, K + 1, args=...)``)."""
    model = model_fn()
    if comm.rank == 0:
        return server_program(comm, cfg, model, X_test, y_test, progress)
    idx = parts[comm.rank - 1]
    return client_program(comm, cfg, model, X[idx], y[idx])


def check_run(X, y, parts, cfg):
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    K = len(parts)
    if K < 1:
        raise ValueError("parts: no clients; pass one index array per client (mlscale.federated.partition)")
    if K > len(X):
        raise ValueError(f"{K} clients but only {len(X)} examples: use num_clients <= {len(X)}")
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(f"clients {empty[:5]} hold no examples; every client needs data")
    if not isinstance(cfg, FedConfig):
        raise TypeError(f"config must be a FedConfig, got {type(cfg).__name__}")
    cfg.validate(K)


def bytes_per_round(trace, rounds):
    """Bytes of every message labelled fed/round=r/..., per round r."""
    out = [0] * rounds
    for m in trace.messages:
        if m.label.startswith("fed/round="):
            r = int(m.label.split("/")[1].split("=")[1])
            if r < rounds:
                out[r] += m.nbytes
    return out


def fit(model_fn, X, y, parts, X_test, y_test, config, network=None, progress=False, backend="sim"):
    """Launch len(parts) + 1 ranks (server + clients) and return the server's FedHistory
    with ``bytes`` per round (sim's trace) and ``time`` (the run's virtual time) filled in.

    model_fn: () -> a fresh ``mlscale.nn`` model (the same initial params on every call).
    """
    from ..comm import launch

    check_run(X, y, parts, config)
    res = launch(program, len(parts) + 1,
                 args=(model_fn, X, y, [np.asarray(p) for p in parts], X_test, y_test, config, progress),
                 network=network, backend=backend)
    hist = res[0]
    if res.trace is not None:
        hist.bytes = bytes_per_round(res.trace, hist.rounds)
    hist.time = res.time
    hist.trace = res.trace
    return hist
