"""What the sim engine knows about each rank (and each background task)."""

READY, RUNNING, BLOCKED, DONE, DEAD = "ready", "running", "blocked", "done", "dead"
_DIE, _RESUME = 0, 1  # heap priorities: a death at time t happens before resumes at t


class _Killed(BaseException):
    """Unwinds a rank's greenlet when it dies or the run is aborted (not an Exception,
    so a learner's ``except Exception`` does not swallow it)."""


class _RankState:
    __slots__ = (
        "rank", "eid", "name", "glet", "clock", "state", "waiting", "token", "result", "exc",
        "death", "died_at", "speed", "started", "waiters",
    )

    def __init__(self, rank, speed, death, eid=None, name=None):
        self.rank = rank  # the rank whose ports and identity this entity uses
        self.eid = rank if eid is None else eid  # its index in Simulator.entities
        self.name = name or f"rank {rank}"
        self.waiters = []  # entities waiting for this one to finish (background tasks)
        self.clock = 0.0
        self.state = READY
        self.waiting = ""
        self.token = 0
        self.result = None
        self.exc = None
        self.death = death
        self.died_at = None
        self.speed = speed
        self.started = False
        self.glet = None
