"""The benchmark: our daemon against qpsmtpd 0.94 and Postfix's smtp-sink.

    python3 bench/run.py [--quick] [--only W1,W4] [--plugins LIST] [--out FILE]

(``make bench`` installs what it needs first and runs this.) It starts, on
127.0.0.1 and ephemeral ports, in a temporary directory:

* a small DNS server (``dnsserver.py``) that every DNS lookup goes to;
* our ``qpsmtpd-forkserver`` with the sample configuration and the
  benchmark's plugin list (``PLUGINS``; ``--plugins`` picks a subset);
* Debian's qpsmtpd 0.94 forkserver with the same configuration files and
  the same plugin list, qpsmtpd's own plugins;
* Postfix's ``smtp-sink``, which accepts and discards;

then runs the workloads W1-W6 against all three, interleaved (see
``workloads.py``), prints a table of medians and ratios with the targets,
and writes everything to a JSON file (default
``bench/results/latest.json``).

A plugin of the list that this tree does not have, or that fails to load,
is left out for both daemons, and the report says so. qpsmtpd 0.94 and
smtp-sink are optional: without them their columns stay empty.

``BENCH_ROOT=/path/to/another/checkout`` benchmarks that tree's daemon with
this benchmark (before/after comparisons of a change).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import procinfo
import servers as servers_module
import workloads
from servers import (
    BENCH_DIR, ROOT, Ours, OursTcpserver, Qpsmtpd094, Qpsmtpd094Tcpserver,
    ServerError, SmtpSink, references_available, write_config)

# The benchmark's plugin list, in config/plugins order: (name, line). The
# same line serves both daemons; {dir} is the daemon's own directory.
PLUGINS = [
    ("karma", "karma db_dir {dir}/karma"),
    ("count_unrecognized_commands", "count_unrecognized_commands 4"),
    ("relay", "relay"),
    ("dnsbl", "dnsbl"),
    ("badmailfrom", "badmailfrom"),
    ("badrcptto", "badrcptto"),
    ("rcpt_ok", "rcpt_ok"),
    ("queue/maildir", "queue/maildir {dir}/maildir"),
]

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")

MB = 1024 * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description="qpsmtpd benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: fewer messages and connections")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help="workloads to run (default: all)")
    parser.add_argument("--plugins", default=None,
                        help="comma-separated subset of: "
                             + ", ".join(name for name, _ in PLUGINS))
    parser.add_argument("--loglevel", type=int, default=None,
                        help="config/loglevel for both daemons (default: the "
                             "sample config's)")
    parser.add_argument("--no-references", action="store_true",
                        help="run only our daemon")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that runs our daemon")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "latest.json"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (logs, maildirs)")
    options = parser.parse_args(argv)
    only = {w.strip().upper() for w in options.only.split(",") if w.strip()}

    programs = references_available()
    if not programs["smtp-source"] and only & {"W1", "W2"}:
        sys.stderr.write("smtp-source not found: install Debian's postfix package "
                         "(make bench does)\n")
        return 2
    scale = Scale(options.quick)
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="qpsmtpd-bench-")
    os.chmod(workdir, 0o755)
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "machine": procinfo.machine(),
        "quick": options.quick,
        "scale": vars(scale),
        "programs": programs,
        "tree": tree_description(),
        "notes": [],
        "workloads": {},
    }
    dns = None
    running = []
    try:
        compile_bytecode(options.python)
        dns, dns_port = start_dns_server()
        wanted = [p for p in PLUGINS
                  if options.plugins is None or p[0] in options.plugins.split(",")]
        plugin_lines, left_out = usable_plugins(wanted, workdir, options.python,
                                                programs, options.no_references)
        report["plugins"] = {"lines": plugin_lines, "left_out": left_out}
        for name, why in left_out.items():
            note(report, f"plugin {name} left out: {why}")

        daemons = {"ours": Ours(workdir, plugin_lines, dns_port, options.loglevel,
                                python=options.python)}
        if not options.no_references:
            if programs["qpsmtpd 0.94"]:
                daemons["qpsmtpd"] = Qpsmtpd094(workdir, plugin_lines, dns_port,
                                                options.loglevel)
            else:
                note(report, "qpsmtpd 0.94 not installed (Debian package qpsmtpd): "
                             "no qpsmtpd column")
            if programs["smtp-sink"]:
                daemons["sink"] = SmtpSink(workdir)
            else:
                note(report, "smtp-sink not installed (Debian package postfix): "
                             "no smtp-sink column")
        report["servers"] = {key: server.label for key, server in daemons.items()}
        for server in daemons.values():
            progress(f"starting {server.label}")
            server.start()
            running.append(server)

        run_workloads(report, daemons, only, scale, programs, options, workdir,
                      plugin_lines, dns_port, running)
    except (ServerError, workloads.WorkloadError) as exc:
        sys.stderr.write(f"benchmark failed: {exc}\n")
        report["error"] = str(exc)
        write_report(report, options.out, started)
        return 1
    finally:
        for server in running:
            server.stop()
        if dns is not None:
            dns.terminate()
            dns.wait()
        if options.keep:
            progress(f"working directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report["machine"]["load_average_after"] = os.getloadavg()
    write_report(report, options.out, started)
    print(format_table(report))
    return 0


def compile_bytecode(python):
    """Write the bytecode caches of the tree under test, as an installation
    has them (an environment with PYTHONDONTWRITEBYTECODE would otherwise
    make W6's per-connection program compile every module it imports, on
    every connection)."""
    paths = [os.path.join(ROOT, name) for name in ("qpsmtpd", "plugins",
                                                    "qpsmtpd_forkserver.py")]
    subprocess.run([python, "-m", "compileall", "-q", *filter(os.path.exists, paths)],
                   check=False, stdout=subprocess.DEVNULL)


class Scale:
    """How much work each workload does (``--quick`` for a smoke run)."""

    def __init__(self, quick):
        self.w1_messages = 200 if quick else 2000
        self.w1_rounds = 2 if quick else 4
        self.w2_messages = 400 if quick else 2000
        self.w2_rounds = 2 if quick else 5
        self.w3_size = (2 if quick else 20) * MB
        self.w3_rounds = 1 if quick else 3
        self.w4_connections = 100 if quick else 500
        self.w4_rounds = 2 if quick else 5
        self.w5_connections = 10 if quick else 50
        self.w6_connections = 10 if quick else 100
        self.w6_rounds = 2 if quick else 5


def run_workloads(report, daemons, only, scale, programs, options, workdir,
                  plugin_lines, dns_port, running):
    results = report["workloads"]
    smtp_source = programs["smtp-source"]

    def record(name, description, unit, function, *args, **kwargs):
        progress(f"{name}: {description}")
        mark = time.monotonic()
        results[name] = {"description": description, "unit": unit,
                         "servers": function(*args, **kwargs)}
        results[name]["seconds"] = round(time.monotonic() - mark, 1)

    if "W4" in only:
        record("W4", f"connect-to-banner latency, {scale.w4_connections} connections",
               "seconds", workloads.w4, daemons, scale.w4_connections, scale.w4_rounds)
    if "W5" in only:
        record("W5", f"private memory (USS) per connection, {scale.w5_connections} idle",
               "bytes", workloads.w5, daemons, scale.w5_connections)
    if "W1" in only:
        for concurrency in (1, 10, 50):
            record(f"W1c{concurrency}",
                   f"one message per connection, {scale.w1_messages} messages, "
                   f"concurrency {concurrency}", "messages/s",
                   workloads.w1, daemons, smtp_source, concurrency,
                   scale.w1_messages, scale.w1_rounds)
    if "W2" in only:
        record("W2", f"~20 messages per connection, concurrency 10, "
                     f"{scale.w2_messages} messages", "messages/s",
               workloads.w2, daemons, smtp_source, scale.w2_messages, scale.w2_rounds)
    if "W3" in only:
        record("W3", f"one {scale.w3_size // MB} MB message", "seconds",
               workloads.w3, daemons, scale.w3_size, scale.w3_rounds, disk_dir=workdir)
    if "W6" in only:
        if not programs["tcpserver"]:
            note(report, "tcpserver not installed (Debian package ucspi-tcp): no W6")
            return
        per_connection = {"ours": OursTcpserver(workdir, plugin_lines, dns_port,
                                                options.loglevel, python=options.python)}
        if "qpsmtpd" in daemons:
            per_connection["qpsmtpd"] = Qpsmtpd094Tcpserver(workdir, plugin_lines, dns_port,
                                                            options.loglevel)
        for server in per_connection.values():
            progress(f"starting {server.label}")
            server.start()
            running.append(server)
        record("W6", "per-connection program under tcpserver: connect-to-banner, "
                     f"{scale.w6_connections} connections", "seconds",
               workloads.w6, per_connection, scale.w6_connections, scale.w6_rounds)
        for server in per_connection.values():
            server.stop()


# -- plugins -----------------------------------------------------------------------

def usable_plugins(wanted, workdir, python, programs, no_references):
    """The config lines both daemons can run, and {name: why} for the rest."""
    left_out = {}
    candidates = []
    for name, line in wanted:
        file_name = name.replace("-", "_") + ".py"
        if not os.path.exists(os.path.join(ROOT, "plugins", file_name)):
            left_out[name] = "not in this tree yet"
            continue
        if (not no_references and programs["qpsmtpd 0.94"] and not os.path.exists(
                os.path.join(servers_module.QPSMTPD094_PLUGIN_DIR, name))):
            left_out[name] = "qpsmtpd 0.94 has no such plugin"
            continue
        candidates.append((name, line))
    problem = plugins_load(candidates, workdir, python)
    if problem is None:
        return [line for _, line in candidates], left_out
    kept = []
    for name, line in candidates:
        problem = plugins_load([(name, line)], workdir, python)
        if problem is None:
            kept.append((name, line))
        else:
            left_out[name] = f"does not load: {problem}"
    if plugins_load(kept, workdir, python) is not None:
        raise ServerError("the benchmark's plugins do not load together")
    return [line for _, line in kept], left_out


def plugins_load(plugins, workdir, python):
    """None when our daemon loads these plugin lines, else the error text."""
    directory = tempfile.mkdtemp(prefix="plugins-", dir=workdir)
    os.makedirs(os.path.join(directory, "karma"), exist_ok=True)
    config_dir = os.path.join(directory, "config")
    write_config(config_dir, [line.format(dir=directory) for _, line in plugins],
                 {"spool_dir": os.path.join(directory, "spool")})
    argv = [*servers_module.per_connection_command(python), "--config-dir", config_dir,
            "--hooks"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(argv, cwd=directory, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    shutil.rmtree(directory, ignore_errors=True)
    if done.returncode == 0:
        return None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


# -- helpers ---------------------------------------------------------------------------

def start_dns_server():
    process = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, "dnsserver.py")],
                               stdout=subprocess.PIPE, start_new_session=True)
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise ServerError("the benchmark's DNS server did not start")
    return process, int(line)


def tree_description():
    """Which checkout ran: its path, commit and whether files were changed."""
    own = os.path.dirname(BENCH_DIR)
    described = {"path": "." if os.path.samefile(ROOT, own) else ROOT}
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        changed = subprocess.run(["git", "-C", ROOT, "status", "--porcelain"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return described
    if commit.returncode == 0:
        described["commit"] = commit.stdout.strip()
        described["changed_files"] = len(changed.stdout.splitlines())
    return described


def progress(text):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def note(report, text):
    report["notes"].append(text)
    progress(text)


def write_report(report, path, started):
    report["duration_seconds"] = round(time.time() - started, 1)
    python = report["machine"].get("python_executable", "")
    root = os.path.dirname(BENCH_DIR) + os.sep
    if python.startswith(root):        # the tree's own virtualenv
        report["machine"]["python_executable"] = python[len(root):]
    report["targets"] = evaluate_targets(report)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1, sort_keys=True)
        handle.write("\n")
    progress(f"results written to {path}")


# -- the table -----------------------------------------------------------------------

def _value(report, workload, server, field="median"):
    try:
        return report["workloads"][workload]["servers"][server][field]
    except (KeyError, TypeError):
        return None


# (label, workload, field, unit, higher is better)
ROWS = [
    ("W1 c=1   messages/s", "W1c1", "median", 1, True),
    ("W1 c=10  messages/s", "W1c10", "median", 1, True),
    ("W1 c=50  messages/s", "W1c50", "median", 1, True),
    ("W1 c=10  CPU ms/message", "W1c10", "cpu_ms_per_message", 1, False),
    ("W2       messages/s", "W2", "median", 1, True),
    ("W2       CPU ms/message", "W2", "cpu_ms_per_message", 1, False),
    ("W3       seconds", "W3", "median", 1, False),
    ("W3       memory growth MB", "W3", "memory_growth", MB, False),
    ("W4       p50 ms", "W4", "p50", 1e-3, False),
    ("W4       p99 ms", "W4", "p99", 1e-3, False),
    ("W5       USS/connection MB", "W5", "median", MB, False),
    ("W6       p50 ms", "W6", "p50", 1e-3, False),
]


def evaluate_targets(report):
    """[(target, value text, met)] for the issue's targets."""
    def ratio(workload, field="median"):
        ours, theirs = _value(report, workload, "ours", field), \
            _value(report, workload, "qpsmtpd", field)
        return ours / theirs if ours and theirs else None

    targets = []

    def add(text, value, met, shown):
        targets.append({"target": text, "value": shown if value is not None else "n/a",
                        "met": bool(met) if value is not None else None})

    r = ratio("W1c10")
    add("W1 c=10 >= 6x qpsmtpd 0.94", r, r is not None and r >= 6,
        f"{r:.2f}x" if r else None)
    r = ratio("W2")
    add("W2 >= 2x qpsmtpd 0.94", r, r is not None and r >= 2, f"{r:.2f}x" if r else None)
    growth = _value(report, "W3", "ours", "memory_growth")
    add("W3 worker memory growth < 2 MB", growth, growth is not None and growth < 2 * MB,
        f"{growth / MB:.2f} MB" if growth is not None else None)
    ours3, sink3, disk = (_value(report, "W3", "ours"), _value(report, "W3", "sink"),
                          _value(report, "W3", "disk"))
    limit = 2 * (sink3 + disk) if sink3 is not None and disk is not None else None
    add("W3 time <= 2x (smtp-sink + disk write)", limit if ours3 is not None else None,
        limit is not None and ours3 is not None and ours3 <= limit,
        f"{ours3:.3f} s vs {limit:.3f} s" if limit and ours3 is not None else None)
    p50, p99 = _value(report, "W4", "ours", "p50"), _value(report, "W4", "ours", "p99")
    add("W4 p50 < 1 ms", p50, p50 is not None and p50 < 1e-3,
        f"{p50 * 1e3:.2f} ms" if p50 is not None else None)
    add("W4 p99 < 3 ms", p99, p99 is not None and p99 < 3e-3,
        f"{p99 * 1e3:.2f} ms" if p99 is not None else None)
    uss = _value(report, "W5", "ours")
    add("W5 USS < 1.5 MB per connection", uss, uss is not None and uss < 1.5 * MB,
        f"{uss / MB:.2f} MB" if uss is not None else None)
    w6 = _value(report, "W6", "ours", "p50")
    add("W6 per-connection program p50 < 60 ms", w6, w6 is not None and w6 < 0.060,
        f"{w6 * 1e3:.1f} ms" if w6 is not None else None)
    return targets


def format_table(report):
    columns = ["ours", "qpsmtpd", "sink"]
    header = ["", "ours", "qpsmtpd 0.94", "smtp-sink", "x qpsmtpd", "x sink"]
    rows = [header]
    for label, workload, field, unit, higher in ROWS:
        if workload not in report["workloads"]:
            continue
        values = [_value(report, workload, key, field) for key in columns]
        shown = [label] + [_number(v / unit) if v is not None else "-" for v in values]
        ours = values[0]
        for other in values[1:]:
            if ours and other:
                factor = ours / other if higher else other / ours
                shown.append(f"{factor:.2f}")
            else:
                shown.append("-")
        rows.append(shown)
    if "W6" in report["workloads"]:
        rows[-1][3] = "-"  # no smtp-sink under tcpserver
    disk = _value(report, "W3", "disk")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("x qpsmtpd / x sink: how many times better ours is (higher is better).")
    if disk is not None:
        size = report.get("scale", {}).get("w3_size", 20 * MB) // MB
        lines.append(f"W3 disk write ({size} MB + fsync) on this machine: {disk:.3f} s")
    load = report["machine"].get("load_average")
    lines.append(f"machine: {report['machine']['cpus']} CPUs, {report['machine']['cpu_model']}, "
                 f"load average at start {load[0]:.2f}" if load else "")
    lines.append("")
    lines.append("targets:")
    for target in report["targets"]:
        state = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"  {target['target']:<42} {target['value']:<24} {state}")
    for text in report["notes"]:
        lines.append(f"note: {text}")
    return "\n".join(lines)


def _number(value):
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
