"""Reference solutions of the exercises (``mlscale.check.solution(name)`` prints them)."""
import numpy as np


def ring_all_reduce(comm, x):
    """Sum ``x`` over every rank with a ring: reduce-scatter, then all-gather."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    chunks = np.array_split(x.astype(x.dtype, copy=True), p)  # views into one new array
    # reduce-scatter: after p-1 steps, chunk (r+1) % p holds the full sum
    for step in range(p - 1):
        send_i, recv_i = (r - step) % p, (r - step - 1) % p
        got = comm.sendrecv(chunks[send_i], dst=right, src=left)
        chunks[recv_i] += got
    # all-gather: pass the finished chunks round the ring
    for step in range(p - 1):
        send_i, recv_i = (r + 1 - step) % p, (r - step) % p
        chunks[recv_i][...] = comm.sendrecv(chunks[send_i], dst=right, src=left)
    return np.concatenate(chunks) if p > 1 else chunks[0].copy()


def data_parallel_step(comm, model, bucket_bytes):
    """Average the gradients over every rank, one all-reduce per bucket (PyTorch DDP)."""
    for bucket in model.buckets(bucket_bytes):  # contiguous slices of the flat grads
        g = model.grads[bucket.slice]  # a view: writing into g writes model.grads
        comm.all_reduce(g, op="sum", out=g)  # every rank gets the sum over ranks
        g /= comm.world_size  # the mean: the gradient of the global batch
