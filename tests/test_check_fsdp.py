"""Notebook 12's FSDP exercise (check.transformer.fsdp_forward): differently written right
answers pass (prefetch too, synchronous or on the communication stream); the usual mistakes
fail with a verdict that names them."""
import re

import numpy as np
import pytest

from mlscale.check.core import solution_source
from mlscale.check import transformer as ct


def loop_with_del(comm, shards, layers, x):
    for shard, layer in zip(shards, layers):
        params = comm.all_gather(shard)
        x = layer(params, x)
        del params
    return x


def prefetch_one_ahead(comm, shards, layers, x):
    nxt = comm.all_gather(shards[0])
    for i, layer in enumerate(layers):
        params = nxt
        nxt = comm.all_gather(shards[i + 1]) if i + 1 < len(layers) else None
        x = layer(params, x)
    return x


def prefetch_on_the_stream(comm, shards, layers, x):
    req = comm.start(lambda c, s: c.all_gather(s), shards[0])
    for i, layer in enumerate(layers):
        params = req.wait()
        if i + 1 < len(layers):
            req = comm.start(lambda c, s: c.all_gather(s), shards[i + 1])
        x = layer(params, x)
    return x


def gather_all_up_front(comm, shards, layers, x):
    everything = [comm.all_gather(s) for s in shards]
    for params, layer in zip(everything, layers):
        x = layer(params, x)
    return x


KEPT = []


def keeps_them_for_backward(comm, shards, layers, x):
    for shard, layer in zip(shards, layers):
        params = comm.all_gather(shard)
        KEPT.append(params)
        x = layer(params, x)
    return x


def all_reduce_of_padded(comm, shards, layers, x):
    for shard, layer in zip(shards, layers):
        sizes = comm.all_gather(np.array([shard.size]))
        full = np.zeros(int(sizes.sum()))
        lo = int(sizes[:comm.rank].sum())
        full[lo:lo + shard.size] = shard
        x = layer(comm.all_reduce(full), x)
    return x


def broadcast_from_rank_0(comm, shards, layers, x):
    for shard, layer in zip(shards, layers):
        x = layer(comm.broadcast(shard, root=0), x)
    return x


def shard_only(comm, shards, layers, x):
    for shard, layer in zip(shards, layers):
        x = layer(shard, x)
    return x


def reversed_order(comm, shards, layers, x):
    for shard, layer in zip(shards, layers):
        pieces = [comm.all_gather(shard)]
        x = layer(np.concatenate(pieces)[::-1], x)
    return x


@pytest.mark.parametrize("fn", [ct.fsdp_forward_solution, loop_with_del, prefetch_one_ahead, prefetch_on_the_stream])
def test_right_answers_pass(fn):
    assert ct.fsdp_forward(fn, verbose=False).passed


@pytest.mark.parametrize("fn, said", [
    (gather_all_up_front, r"every layer was gathered up front.*whole model"),
    (keeps_them_for_backward, r"still alive when layer 1 ran.*free them"),
    (all_reduce_of_padded, r"all_reduce.*2\(p-1\)/p.*all_gather"),
    (broadcast_from_rank_0, r"broadcast.*ONE rank's"),
    (shard_only, r"this rank's shard only.*all_gather the shards first"),
    (reversed_order, r"not its \d+ flat parameters in rank order"),
])
def test_mistakes_are_named(fn, said):
    KEPT.clear()
    res = ct.fsdp_forward(fn, verbose=False)
    assert not res.passed
    assert re.search(said, " ".join(res.failures)), res.failures


def test_a_stub_is_not_implemented_and_the_solution_pastes():
    def stub(comm, shards, layers, x):
        raise NotImplementedError

    res = ct.fsdp_forward(stub, verbose=False)
    assert not res.passed and res.not_implemented
    ns = {}
    exec(solution_source("fsdp_forward"), ns)
    assert ct.fsdp_forward(ns["fsdp_forward_solution"], verbose=False).passed
