"""Where our daemon spends its time: cProfile and py-spy under a W1 load.

    python3 bench/profile_daemon.py [--messages 500] [--concurrency 10] [--out DIR]

Starts our forkserver with the benchmark's configuration (as ``run.py``
does) and sends ``--messages`` one-message connections with smtp-source,
twice:

1. under cProfile (``profiled_forkserver.py``): the parent's profile and
   every worker's, merged; ``DIR/cprofile.txt`` lists the functions by
   own time and by cumulative time, per connection, and
   ``DIR/workers.pstats`` holds the merged profile for ``pstats``;
2. under py-spy, when it is installed (``pip install py-spy``), sampling
   the parent and its workers (``--subprocesses``): ``DIR/pyspy.txt`` is
   the folded stacks ("flame" as text: one line per stack, the sample
   count at the end), ``DIR/pyspy-hot.txt`` the heaviest stacks and the
   own-time share of each function, ``DIR/flame.txt`` the same samples as
   an indented top-down tree with each frame's share.

Also prints the CPU time per message of the daemon without a profiler,
for comparison. Results go to ``DIR`` (default ``bench/results/profile``).
"""

import argparse
import collections
import glob
import io
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time

import run as bench
import servers as servers_module
import workloads
from servers import BENCH_DIR, Ours, find_program


_LINE_NUMBER = re.compile(r":\d+\)$")


class ProfiledOurs(Ours):
    key = "ours-profiled"
    label = "ours (forkserver under cProfile)"

    def __init__(self, *args, profile_dir, **kwargs):
        super().__init__(*args, **kwargs)
        self.profile_dir = profile_dir

    def prepare(self):
        argv, env, cwd = super().prepare()
        argv[1] = os.path.join(BENCH_DIR, "profiled_forkserver.py")
        env["BENCH_PROFILE_DIR"] = self.profile_dir
        return argv, env, cwd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--per-connection", type=int, default=1,
                        help="messages per connection (smtp-source -d when > 1)")
    parser.add_argument("--plugins", default=None)
    parser.add_argument("--loglevel", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "profile"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--no-pyspy", action="store_true")
    options = parser.parse_args(argv)
    smtp_source = find_program("smtp-source")
    if not smtp_source:
        sys.stderr.write("smtp-source not found (Debian package postfix)\n")
        return 2
    os.makedirs(options.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="qpsmtpd-profile-")
    dns, dns_port = bench.start_dns_server()
    programs = servers_module.references_available()
    wanted = [p for p in bench.PLUGINS
              if options.plugins is None or p[0] in options.plugins.split(",")]
    plugin_lines, left_out = bench.usable_plugins(wanted, workdir, options.python,
                                                  programs, no_references=True)
    for name, why in left_out.items():
        bench.progress(f"plugin {name} left out: {why}")
    try:
        plain = Ours(workdir, plugin_lines, dns_port, options.loglevel,
                     python=options.python).start()
        try:
            load(plain, smtp_source, options)  # warm up
            result = load(plain, smtp_source, options)
            bench.progress(f"without profiler: {result['rate']:.1f} messages/s, "
                           f"{result['cpu_ms_per_message']:.2f} ms CPU per message")
            pyspy = find_program("py-spy") or _next_to_python("py-spy", options.python)
            if options.no_pyspy:
                pass
            elif pyspy:
                bench.progress("py-spy: sampling parent and workers")
                py_spy(pyspy, plain, smtp_source, options)
            else:
                bench.progress("py-spy not installed: pip install py-spy")
        finally:
            plain.stop()

        profile_dir = os.path.join(workdir, "pstats")
        os.makedirs(profile_dir)
        profiled = ProfiledOurs(workdir, plugin_lines, dns_port, options.loglevel,
                                python=options.python, profile_dir=profile_dir).start()
        try:
            for stale in glob.glob(os.path.join(profile_dir, "worker-*.pstats")):
                os.unlink(stale)  # the readiness probe's connection
            load(profiled, smtp_source, options)
        finally:
            profiled.stop()
        report = cprofile_report(profile_dir, options)
        with open(os.path.join(options.out, "cprofile.txt"), "w") as handle:
            handle.write(f"plugins: {', '.join(plugin_lines)}\n")
            handle.write(f"without profiler: {result['rate']:.1f} messages/s, "
                         f"{result['cpu_ms_per_message']:.2f} ms CPU per message\n\n")
            handle.write(report)
        bench.progress(f"written: {options.out}/cprofile.txt")
    finally:
        dns.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def load(server, smtp_source, options):
    per_connection = options.per_connection > 1
    invocations = 1
    messages = options.messages
    sessions = options.concurrency
    if per_connection:
        messages = options.concurrency * options.per_connection
        invocations = max(1, options.messages // messages)
    return workloads._throughput(smtp_source, server, messages, sessions,
                                 invocations, per_connection)


def py_spy(pyspy, server, smtp_source, options):
    folded = os.path.join(options.out, "pyspy.txt")
    recorder = subprocess.Popen(
        [pyspy, "record", "--pid", str(server.pid), "--subprocesses", "--format", "raw",
         "--rate", "500", "--nonblocking", "--output", folded],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    load(server, smtp_source, options)
    recorder.send_signal(2)  # SIGINT: py-spy writes its output and ends
    _, errors = recorder.communicate(timeout=60)
    if not os.path.exists(folded):
        bench.progress(f"py-spy failed: {errors.decode(errors='replace')[-500:]}")
        return
    with open(os.path.join(options.out, "pyspy-hot.txt"), "w") as handle:
        handle.write(hot_paths(folded))
    with open(os.path.join(options.out, "flame.txt"), "w") as handle:
        handle.write(flame_text(folded))
    bench.progress(f"written: {folded}, {options.out}/pyspy-hot.txt, "
                   f"{options.out}/flame.txt")


def flame_text(folded, min_share=0.015, depth=14):
    """The folded stacks as an indented top-down tree ("flame" as text):
    each line a frame with its share of all samples, children below it;
    frames under ``min_share`` are left out. The roots are ``parent`` (the
    accept loop) and ``worker`` (a forked session)."""
    tree = {}
    total = 0
    with open(folded) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            processes = sum(1 for f in frames if f.startswith("process "))
            # one node per function, not per line: "f (file.py:12)" -> "f (file.py)"
            frames = [_LINE_NUMBER.sub(")", f) for f in frames
                      if not f.startswith("process ")]
            frames.insert(0, "worker" if processes > 1 else "parent")
            node = tree
            for frame in frames[:depth]:
                entry = node.setdefault(frame, [0, {}])
                entry[0] += count
                node = entry[1]
            total += count
    out = io.StringIO()

    def show(node, indent):
        for frame, (count, children) in sorted(node.items(), key=lambda i: -i[1][0]):
            if count < min_share * total:
                continue
            out.write(f"{100 * count / total:5.1f}%  {'  ' * indent}{frame}\n")
            show(children, indent + 1)

    show(tree, 0)
    return out.getvalue()


def hot_paths(folded, top=40):
    """The heaviest folded stacks, and each function's own share."""
    stacks = collections.Counter()
    own = collections.Counter()
    total = 0
    with open(folded) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            stack = ";".join(frames)
            stacks[stack] += count
            if frames:
                own[frames[-1]] += count
            total += count
    out = io.StringIO()
    out.write(f"{total} samples\n\nown time by function (top {top}):\n")
    for frame, count in own.most_common(top):
        out.write(f"{100 * count / total:6.2f}%  {frame}\n")
    out.write(f"\nheaviest stacks (top {top}):\n")
    for stack, count in stacks.most_common(top):
        out.write(f"{100 * count / total:6.2f}%  {stack}\n")
    return out.getvalue()


def cprofile_report(profile_dir, options):
    workers = glob.glob(os.path.join(profile_dir, "worker-*.pstats"))
    out = io.StringIO()
    connections = len(workers)
    out.write(f"{connections} worker profiles merged "
              f"({options.per_connection} message(s) per connection)\n\n")
    if workers:
        stats = pstats.Stats(*workers, stream=out)
        stats.files = []  # not one header line per worker
        total = stats.total_tt
        out.write(f"worker CPU per connection under cProfile: "
                  f"{1000 * total / connections:.2f} ms\n\n")
        stats.dump_stats(os.path.join(options.out, "workers.pstats"))
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        out.write("\nwho compiles regular expressions in the worker:\n")
        stats.print_callers(r"re/__init__.py.*\(_compile\)")
    parent = os.path.join(profile_dir, "parent.pstats")
    if os.path.exists(parent):
        out.write("\n\n==== parent (accept loop) ====\n")
        stats = pstats.Stats(parent, stream=out)
        stats.files = []
        stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def _next_to_python(name, python):
    candidate = os.path.join(os.path.dirname(python), name)
    return candidate if os.access(candidate, os.X_OK) else None


if __name__ == "__main__":
    sys.exit(main())
