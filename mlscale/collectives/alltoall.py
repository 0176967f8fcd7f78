"""All-to-all (MPI_Alltoall / Alltoallv, torch ``all_to_all``, JAX ``all_to_all``),
written on ``sendrecv`` alone.

Rank i has p pieces; piece j goes to rank j, and rank j keeps what arrives from every
rank in rank order. It is a transpose of a p x p matrix of blocks whose row i lives on
rank i: the collective of expert parallelism (tokens to their experts and back) and
of Ulysses sequence parallelism (sequence-sharded to head-sharded).

Every algorithm here takes ``(comm, pieces, counts)``: ``pieces`` this rank's p arrays
(piece j of shape ``(counts[r][j],) + rows``), ``counts`` the p x p matrix of rows
rank i sends rank j, known on every rank (the Communicator agrees on it first: MPI's
Alltoallv is told the receive counts too). It returns the p arrays received, piece j
from rank j. Uneven pieces (Alltoallv) work in every algorithm.

Costs on the one-port model, n = the bytes a rank sends in all (its p pieces of n/p,
its own included; see :func:`mlscale.collectives.cost.all_to_all`):

==========  ==============================================  ========================
pairwise    (p-1) (alpha + (n/p) beta)                      p-1 messages, (p-1)/p n
bruck       sum over ceil(lg p) rounds k of                 lg p messages,
            (alpha + m_k (n/p) beta), m_k = #{i<p: bit k}   n/2 lg p for p = 2^q
==========  ==============================================  ========================

Pairwise wins for long messages (each byte moves once), Bruck for short ones (fewer
messages, each byte moving up to lg p times): Thakur, Rabenseifner and Gropp 2005,
section 3.4, MPICH's choice (Bruck for pieces of at most 256 bytes on 8 ranks or more).
"""
from ._p2p import TAG
from ._reduce_ops import buffer_xp


def _exchange(comm, x, dst, src, shape, dtype):
    """Send x to dst while receiving a piece of ``shape`` from src."""
    if comm.prefers_out:
        buf = buffer_xp(comm, x).empty(shape, dtype=dtype)
        return comm.sendrecv(x, dst, src, TAG, out=buf, _internal=True)
    return comm.sendrecv(x, dst, src, TAG, _internal=True).reshape(shape)


def pairwise(comm, pieces, counts):
    """Pairwise exchange: p-1 steps, in step k swap one piece with one peer.

    For p a power of two the peer is r XOR k (Thakur et al. 2005: every step pairs the
    ranks off, both directions of a link busy at once); otherwise rank r sends to r+k
    and receives from r-k (mod p), a shifted ring. Each byte moves once:
    (p-1)(alpha + (n/p) beta)."""
    p, r = comm.world_size, comm.rank
    rows, dtype = tuple(pieces[r].shape[1:]), pieces[r].dtype
    got = [None] * p
    got[r] = pieces[r].copy()
    pow2 = p & (p - 1) == 0
    for k in range(1, p):
        dst, src = (r ^ k, r ^ k) if pow2 else ((r + k) % p, (r - k) % p)
        got[src] = _exchange(comm, pieces[dst], dst, src, (counts[src][r],) + rows, dtype)
    return got


def bruck(comm, pieces, counts):
    """Bruck et al. 1997 (Thakur et al. 2005, section 3.4): ceil(lg p) steps.

    1. rotate: block i is the piece for rank r+i (no copy here, just an order);
    2. in step k (k = 1, 2, 4, ...) send every block whose index has bit k set to rank
       r+k, and receive the same blocks from rank r-k: after all steps block i has
       moved i ranks on, so at rank r it came from rank r-i and is meant for r;
    3. unrotate: the piece from rank j is block (r-j) mod p.

    Before step k, block i at rank s holds the piece that rank s - (i mod k) meant for
    rank s - (i mod k) + i; so each rank knows the size of every block it receives,
    uneven pieces included. Bytes: m_k blocks in step k, m_k = #{i < p: i & k}."""
    p, r = comm.world_size, comm.rank
    xp = buffer_xp(comm, pieces[r])
    rows, dtype = tuple(pieces[r].shape[1:]), pieces[r].dtype
    blocks = [pieces[(r + i) % p] for i in range(p)]  # 1. block i goes to rank r+i
    k = 1
    while k < p:  # 2.
        dst, src = (r + k) % p, (r - k) % p
        idx = [i for i in range(p) if i & k]
        send = xp.concatenate([blocks[i].reshape(-1) for i in idx]) if idx else xp.empty(0, dtype)
        sizes = []
        for i in idx:  # the block src holds at position i: from origin o, for o + i
            o = (src - (i & (k - 1))) % p
            sizes.append(counts[o][(o + i) % p])
        row = 1
        for d in rows:
            row *= d
        total = sum(sizes) * row
        flat = _exchange(comm, send, dst, src, (total,), dtype)
        off = 0
        for i, c in zip(idx, sizes):
            blocks[i] = flat[off:off + c * row].reshape((c,) + rows)
            off += c * row
        k <<= 1
    got = [blocks[(r - j) % p] for j in range(p)]  # 3.
    got[r] = got[r].copy()  # block 0 never moved: it is still the caller's piece
    return got


def linear(comm, pieces, counts):
    """Every receive and send posted at once, then one wait (MPICH's medium-size
    "isend-irecv" algorithm; NCCL's grouped send/recv is this). Rank r posts its
    sends in the order r+1, r+2, ... so the ports meet no collision where the engine
    serves them in order; the time is then the pairwise one's, without the steps'
    synchronisation (a lower bound where ports contend)."""
    p, r = comm.world_size, comm.rank
    xp = buffer_xp(comm, pieces[r])
    rows, dtype = tuple(pieces[r].shape[1:]), pieces[r].dtype
    got = [None] * p
    got[r] = pieces[r].copy()
    rreqs = []
    for k in range(1, p):
        src = (r - k) % p
        out = xp.empty((counts[src][r],) + rows, dtype=dtype) if comm.prefers_out else None
        rreqs.append((src, comm.irecv(src, TAG, out, _internal=True)))
    sreqs = [comm.isend(pieces[(r + k) % p], (r + k) % p, TAG, _internal=True) for k in range(1, p)]
    for src, req in rreqs:
        got[src] = req.wait().reshape((counts[src][r],) + rows)
    for req in sreqs:
        req.wait()
    return got


#: MPICH's MPIR_CVAR_ALLTOALL_SHORT_MSG_SIZE: Bruck for pieces up to this many bytes
SHORT_PIECE_BYTES = 256


def choose(p, piece_nbytes):
    """The sim engine's choice for ``algorithm=None``, MPICH's by size: Bruck when the
    largest piece is at most 256 bytes on 8 ranks or more, pairwise exchange otherwise.
    ``piece_nbytes`` must be the same on every rank (it is: the agreed counts give it)."""
    return "bruck" if p >= 8 and piece_nbytes <= SHORT_PIECE_BYTES else "pairwise"


def reference(inputs):
    """The specification, for tests: ``inputs[i][j]`` is what rank i sends rank j;
    returns ``outputs`` with ``outputs[j][i] = inputs[i][j]`` (a block transpose)."""
    p = len(inputs)
    return [[inputs[i][j] for i in range(p)] for j in range(p)]
