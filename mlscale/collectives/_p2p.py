"""The few point-to-point helpers every algorithm uses, on the collective tag."""
import functools

from ._reduce_ops import reduce_into

#: user tags lie in [0, MAX_TAG); collectives send on TAG, above it
MAX_TAG = 1 << 20
TAG = MAX_TAG + 7


def send(comm, x, dst):
    comm.send(x, dst, TAG, _internal=True)


def recv(comm, src, out=None):
    return comm.recv(src, TAG, out, _internal=True)


def sendrecv(comm, x, dst, src, out=None):
    return comm.sendrecv(x, dst, src, TAG, out, _internal=True)


def pass_along(comm, x, dst, src, into=None, give=False):
    """One step of a pipeline round a ring: send ``x`` on to ``dst``, receive the next
    piece from ``src``; returns the piece received, which the caller may pass along in
    turn. ``into``: where the piece must end up (it is received straight there on
    engines that prefer that). ``give``: the caller never touches ``x`` again, so the
    sim engine hands the buffer over instead of copying it."""
    if comm.prefers_out:
        return comm.sendrecv(x, dst, src, TAG, out=into, _internal=True)
    got = comm.sendrecv(x, dst, src, TAG, _internal=True, _give=give)
    if into is not None:
        into[...] = got
    return got


def reduce_(comm, acc, x, op):
    """acc <- acc (op) x, charging the modelled reduction cost (gamma)."""
    reduce_into(acc, x, op)
    comm._charge_reduce(x.nbytes)


def bounds(n, parts):
    """Start offsets of ``parts`` chunks of n elements, as np.array_split cuts them:
    the first n % parts chunks get one element more. Returns a list of parts+1 offsets."""
    q, r = divmod(n, parts)
    out = [0]
    for i in range(parts):
        out.append(out[-1] + q + (1 if i < r else 0))
    return out


@functools.lru_cache(maxsize=64)  # (pure: the same p gives the same answer; twice per collective)
def fold(p):
    """MPICH's fold for world sizes that are not powers of two.

    Returns (pof2, rem, newrank_of, real_of): pof2 = largest power of two <= p,
    rem = p - pof2. Ranks r < 2*rem pair up (even r hands its data to r+1, which
    stands for both); the other ranks keep going as newrank r - rem.
    """
    pof2 = 1
    while pof2 * 2 <= p:
        pof2 *= 2
    rem = p - pof2

    def newrank_of(r):
        if r < 2 * rem:
            return -1 if r % 2 == 0 else r // 2
        return r - rem

    def real_of(v):
        return 2 * v + 1 if v < rem else v + rem

    return pof2, rem, newrank_of, real_of


def release(comm, arr):
    """The algorithm is done with a buffer it received (lets the sim engine reuse it)."""
    comm._release(arr)


def fold_in(comm, acc, op):
    """MPICH's start for world sizes that are not powers of two: among the ranks
    r < 2 rem, each even rank hands its vector to the odd rank above it, which reduces
    it and stands for both. Returns (pof2, newrank, real_of); newrank is -1 for the
    ranks that sit the middle part out."""
    pof2, rem, newrank_of, real_of = fold(comm.world_size)
    r = comm.rank
    if r < 2 * rem:
        if r % 2 == 0:
            send(comm, acc, r + 1)
        else:
            reduce_(comm, acc, recv(comm, r - 1), op)
    return pof2, newrank_of(r), real_of


def fold_out(comm, acc):
    """...and its end: the odd rank hands the finished vector back to its even partner."""
    rem = fold(comm.world_size)[1]
    r = comm.rank
    if r < 2 * rem:
        if r % 2 == 0:
            return recv(comm, r + 1)
        send(comm, acc, r - 1)
    return acc
