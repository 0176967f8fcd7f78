"""The ``mlscale`` command: ``mlscale doctor``, ``mlscale bench NAME [...]``."""
from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = ("allreduce", "kernels", "train", "gpt", "fsdp", "alltoall", "sim", "megatron")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="mlscale", description="mlscale: distributed ML you can run")
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("doctor", help="what this machine offers and which engine each course level uses")
    d.add_argument("--no-mpi-check", action="store_true", help="do not start mpiexec to test MPI")
    b = sub.add_parser("bench", help=f"benchmarks: {', '.join(BENCHES)} or all")
    b.add_argument("name", choices=BENCHES + ("all",))
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark (try --help)")
    sub.add_parser("version", help="print the version")
    ns = parser.parse_args(argv)
    if ns.command == "doctor":
        from .doctor import doctor

        doctor(check_mpi=not ns.no_mpi_check)
        return 0
    if ns.command == "bench":
        names = BENCHES if ns.name == "all" else (ns.name,)
        for name in names:
            try:
                mod = importlib.import_module(f"mlscale.bench.{name}")
            except ModuleNotFoundError as e:
                print(f"mlscale bench {name}: not available ({e})", file=sys.stderr)
                return 2
            rc = mod.main(ns.args)
            if rc:
                return rc
        return 0
    if ns.command == "version":
        from . import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
