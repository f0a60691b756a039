"""Our forkserver with cProfile on: the parent and every worker profiled.

Started by ``profile_daemon.py`` instead of ``qpsmtpd_forkserver.py`` (same
arguments). ``$BENCH_PROFILE_DIR`` receives ``parent.pstats`` when the
daemon stops (SIGTERM) and ``worker-<pid>.pstats`` for each connection,
written just before the worker leaves. Nothing of the daemon is changed:
the wrapper replaces the worker's entry point (``Worker.run`` of
``qpsmtpd.forkserver``, or ``Server.child`` of the older single-file
forkserver) with a version that switches from the parent's profiler to its
own, and ``os._exit`` in the worker with one that saves the profile first.
Profiles count CPU time (``time.process_time``), not time spent waiting.
"""

import cProfile
import os
import sys
import time

# the tree under test: $BENCH_ROOT (see servers.py), else this one
sys.path.insert(0, os.environ.get("BENCH_ROOT")
                or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qpsmtpd_forkserver  # noqa: E402

PROFILE_DIR = os.environ["BENCH_PROFILE_DIR"]
# CPU time, not wall time: waiting for the client is not the daemon's cost
parent_profiler = cProfile.Profile(time.process_time)
_real_exit = os._exit


def profiled(entry):
    def run_profiled(*args, **kwargs):
        parent_profiler.disable()
        profiler = cProfile.Profile(time.process_time)

        def exit_after_saving(status):
            profiler.disable()
            profiler.dump_stats(os.path.join(PROFILE_DIR, f"worker-{os.getpid()}.pstats"))
            _real_exit(status)

        os._exit = exit_after_saving
        profiler.enable()
        return entry(*args, **kwargs)
    return run_profiled


def install():
    try:
        from qpsmtpd import forkserver
    except ImportError:
        forkserver = None
    if forkserver is not None and hasattr(forkserver, "Worker"):
        forkserver.Worker.run = profiled(forkserver.Worker.run)
    else:
        server = qpsmtpd_forkserver.Server
        server.child = profiled(server.child)


def main():
    install()
    parent_profiler.enable()
    try:
        return qpsmtpd_forkserver.main(sys.argv[1:])
    finally:
        parent_profiler.disable()
        parent_profiler.dump_stats(os.path.join(PROFILE_DIR, "parent.pstats"))


if __name__ == "__main__":
    sys.exit(main())
