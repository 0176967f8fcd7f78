"""One rank of ``launch(..., backend="mpi")`` (or "nccl", "torch"); started by
:mod:`mlscale.comm._mpi_launch` as ``mpiexec -n N python -m mlscale.comm._mpi_worker DIR``.

Reads ``DIR/meta.pkl`` and ``DIR/task.pkl``, runs ``fn(comm, *args)`` and writes
``DIR/rank<r>.pkl``: ``("ok", result)`` or ``("err", pickled exception, type name,
message, traceback text, time)``. A rank that raises calls ``MPI_Abort`` once its
error is written, so the other ranks never wait forever for it. If the launching
process dies, the ranks exit too.
"""
import os
import pickle
import sys
import threading
import time
import traceback


def _watch_launcher():
    """Exit if the process that launched us is gone (a killed notebook kernel)."""
    try:
        pid = int(os.environ.get("MLSCALE_LAUNCHER_PID", "0"))
    except ValueError:
        return
    if pid <= 0:
        return

    def watch():
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(70)
            except OSError:
                pass

    threading.Thread(target=watch, daemon=True, name="mlscale-launcher-watch").start()


def _write(d, rank, obj):
    import cloudpickle

    try:
        data = cloudpickle.dumps(obj)
    except Exception as e:  # an unpicklable result: report it as this rank's error
        data = pickle.dumps((
            "err", None, type(e).__name__,
            f"rank {rank} returned a value that cannot be pickled back ({e}); "
            "return arrays, numbers or plain containers",
            "", time.time(),
        ))
    tmp = os.path.join(d, f".rank{rank}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(d, f"rank{rank}.pkl"))  # atomic: never half a file


def _error_record(e):
    import cloudpickle

    tb = traceback.format_exc()
    try:
        blob = cloudpickle.dumps(e)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        blob = None
    return ("err", blob, type(e).__name__, str(e), tb, time.time())


def main(d):
    with open(os.path.join(d, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    sys.path[:0] = [p for p in meta["sys_path"] if p not in sys.path]
    drop = os.environ.pop("MLSCALE_DROP_HWLOC_XMLFILE", None)  # set only for hydra (_mpi_launch)
    if drop is not None and os.environ.get("HWLOC_XMLFILE") == drop:
        del os.environ["HWLOC_XMLFILE"]
    _watch_launcher()
    try:  # whole lines reach the launcher as they are printed, not at exit
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):  # pragma: no cover
        pass

    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    with open(os.path.join(d, f"pid{rank}"), "w") as f:
        f.write(str(os.getpid()))
    if meta.get("board", True):  # what this rank waits for, read by the launcher (_mpi_state)
        os.environ["MLSCALE_MPI_STATE"] = os.path.join(d, f"state{rank}")
    real_exit = os._exit

    def _exit(code):  # os._exit in fn skips every handler: say it first, for the launcher
        try:
            with open(os.path.join(d, f"exit{rank}"), "w") as f:
                f.write(repr(code))
        finally:
            real_exit(code)

    os._exit = _exit
    try:
        with open(os.path.join(d, "task.pkl"), "rb") as f:
            fn, args = pickle.load(f)
        if meta["engine"] == "torch":
            from mlscale.comm.torch_dist import TorchComm

            os.environ.update(RANK=str(rank), WORLD_SIZE=str(world.Get_size()),
                              LOCAL_RANK=str(rank), MASTER_ADDR=meta.get("master_addr", "127.0.0.1"),
                              MASTER_PORT=str(meta["master_port"]))
            comm = TorchComm(check=meta["check"], **meta.get("comm_kwargs", {}))
        elif meta["engine"] == "nccl":
            from mlscale.comm.nccl import NCCLComm

            comm = NCCLComm(check=meta["check"])
        else:
            from mlscale.comm.mpi import MPIComm

            comm = MPIComm(check=meta["check"])
        result = fn(comm, *args)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the launcher
        _write(d, rank, _error_record(e))
        sys.stdout.flush()
        sys.stderr.flush()
        if world.Get_size() > 1:
            world.Abort(1)  # the other ranks may be waiting for this one
        sys.exit(1)
    _write(d, rank, ("ok", result))
    if meta["engine"] == "torch":
        # gloo breaks every connection of a process that exits: a rank still waiting on this
        # one would fail with "Connection closed by peer". Leave together instead, so the
        # launcher's watch names what that rank waits for (_mpi_state)
        world.Barrier()
        from mlscale.comm import torch_dist

        torch_dist.close_default_group()  # then this process ends at once (see there)


if __name__ == "__main__":
    main(sys.argv[1])
