"""The communication of pipeline parallelism: activations forward, gradients backward,
between neighbour stages only (picotron's ``pp_communications.py``).

Stage s (= rank s) receives micro-batch j's activations from s-1 and sends its output
to s+1; in backward it receives d(output) from s+1 and sends d(input) to s-1. Sends
are NON-BLOCKING (``isend``), waited for at the end of the step: above the eager limit
(64 KiB on ``sim``, as in MPI) a blocking send waits until the receiver posts its recv,
and in 1F1B's steady state stage s would be sending activations forward while stage
s+1 sends gradients back: two blocking sends facing each other, a deadlock. Receives
block: a stage cannot compute without its input.

``PipeComm(comm, blocking=True)`` is the naive version with blocking sends, kept to
show that deadlock (``DeadlockError`` on ``sim``).

Tags keep micro-batches apart: activations of j on tag 2j, gradients on 2j + 1.
Messages are labelled "pp/activations" and "pp/gradients" in the trace.
"""
from __future__ import annotations


class PipeComm:
    """Send/recv between neighbour stages of a pipeline; ``wait_all()`` ends a step."""

    def __init__(self, comm, blocking=False):
        self.comm, self.blocking = comm, bool(blocking)
        self.stage, self.num_stages = comm.rank, comm.world_size
        self.pending = []
        self.nbytes = {"activations": 0, "gradients": 0}

    @property
    def is_first(self):
        return self.stage == 0

    @property
    def is_last(self):
        return self.stage == self.num_stages - 1

    def send_forward(self, x, microbatch):
        """Activations of ``microbatch`` to the next stage (no-op on the last)."""
        if not self.is_last:
            self.nbytes["activations"] += int(x.nbytes)
            with self.comm.label("pp/activations"):
                self._send(x, self.stage + 1, 2 * microbatch)

    def recv_forward(self, microbatch):
        """Activations of ``microbatch`` from the previous stage."""
        return self.comm.recv(self.stage - 1, tag=2 * microbatch)

    def send_backward(self, dx, microbatch):
        """d loss / d input of ``microbatch`` to the previous stage (no-op on the first)."""
        if not self.is_first:
            self.nbytes["gradients"] += int(dx.nbytes)
            with self.comm.label("pp/gradients"):
                self._send(dx, self.stage - 1, 2 * microbatch + 1)

    def recv_backward(self, microbatch):
        """d loss / d output of ``microbatch`` from the next stage."""
        return self.comm.recv(self.stage + 1, tag=2 * microbatch + 1)

    def _send(self, x, dst, tag):
        if self.blocking:  # the naive way, kept as a lesson: 1F1B deadlocks above the eager limit
            self.comm.send(x, dst, tag=tag)
        else:
            self.pending.append(self.comm.isend(x, dst, tag=tag))

    def wait_all(self):
        for req in self.pending:
            req.wait()
        self.pending.clear()


__all__ = ["PipeComm"]
