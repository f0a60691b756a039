"""The workloads W1-W6 (docs/PERFORMANCE.md says what each measures).

Each takes the running servers ({key: Server}) and returns
``{key: result dict}``. Servers are driven one after another in rounds,
the order rotating from round to round, so a slow minute of a shared
machine hits every server alike; a result is the median over rounds.

Besides wall-clock rates, W1 and W2 record the CPU time the server spent
per message (its own and its finished workers'), which does not depend on
what else the machine was doing.
"""

import os
import statistics
import subprocess
import time

import client
import procinfo

SMTP_SOURCE_BODY = 4000          # payload bytes: ~4.3 KB messages with headers
W2_PER_INVOCATION = 200          # -d -s 10 -m 200: ten sessions of ~20 messages


class WorkloadError(RuntimeError):
    pass


def interleaved(servers, rounds, run_one):
    """{key: [result per round]}, servers in rotating order."""
    keys = list(servers)
    results = {key: [] for key in keys}
    for index in range(rounds):
        shift = index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            results[key].append(run_one(servers[key]))
    return results


def quiesce(server, timeout=10.0):
    """Wait until the server has no worker left, so its CPU account is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.workers():
            return True
        time.sleep(0.01)
    return False


def smtp_source(smtp_source_path, server, messages, sessions, per_connection=False):
    argv = [smtp_source_path, "-s", str(sessions), "-m", str(messages),
            "-l", str(SMTP_SOURCE_BODY), "-f", client.SENDER, "-t", client.RECIPIENT,
            "-M", client.HELO]
    if per_connection:
        argv.append("-d")
    argv.append(f"127.0.0.1:{server.port}")
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900)
    if done.returncode != 0:
        raise WorkloadError(f"smtp-source against {server.label} failed "
                            f"({done.returncode}): {done.stdout.decode(errors='replace')}"
                            f"\n{server.log_tail()}")


def _throughput(smtp_source_path, server, messages, sessions, invocations=1,
                per_connection=False):
    quiesce(server)
    before = server.delivered()
    cpu_before = server.cpu_seconds()
    start = time.perf_counter()
    for _ in range(invocations):
        smtp_source(smtp_source_path, server, messages, sessions, per_connection)
    elapsed = time.perf_counter() - start
    quiesce(server)
    cpu = server.cpu_seconds() - cpu_before
    total = messages * invocations
    if before is not None:
        landed = server.delivered() - before
        if landed != total:
            raise WorkloadError(f"{server.label}: {landed} of {total} messages "
                                f"in the maildir")
    return {"messages": total, "seconds": elapsed, "rate": total / elapsed,
            "cpu_ms_per_message": cpu * 1000 / total}


def _summarise_throughput(per_round):
    return {
        "median": statistics.median(r["rate"] for r in per_round),
        "cpu_ms_per_message": statistics.median(r["cpu_ms_per_message"] for r in per_round),
        "rounds": per_round,
    }


def w1(servers, smtp_source_path, concurrency, messages=2000, rounds=4):
    """One message per connection, ``messages`` in all per server."""
    per_round = max(concurrency, messages // rounds)
    raw = interleaved(servers, rounds, lambda server: _throughput(
        smtp_source_path, server, per_round, concurrency))
    for server in servers.values():
        server.clear_maildir()
    return {key: _summarise_throughput(value) for key, value in raw.items()}


def w2(servers, smtp_source_path, messages=2000, rounds=5):
    """Twenty messages per connection, ten connections at a time."""
    invocations = max(1, messages // (rounds * W2_PER_INVOCATION))
    raw = interleaved(servers, rounds, lambda server: _throughput(
        smtp_source_path, server, W2_PER_INVOCATION, 10, invocations,
        per_connection=True))
    for server in servers.values():
        server.clear_maildir()
    return {key: _summarise_throughput(value) for key, value in raw.items()}


def w3(servers, size=20 * 1024 * 1024, rounds=3, disk_dir=None):
    """One message of ``size`` bytes: seconds, and the worker's memory growth.

    The worker is the process serving the connection (for smtp-sink, its
    only process). Growth = peak resident size after the 250 minus the
    resident size at the banner. Also times writing ``size`` bytes to a
    file and fsyncing it (``disk``), the floor for a queue that keeps the
    message.
    """
    message = client.message_of_size(size)

    def run_one(server):
        quiesce(server)
        known = set(server.workers())
        seen = {}

        def at_banner():
            worker = _new_worker(server, known)
            seen["pid"] = worker
            seen["rss"] = procinfo.rss(worker)

        def before_quit():
            seen["peak"] = procinfo.peak_rss(seen["pid"])

        seconds = client.send_one(server.port, message, at_banner, before_quit)
        growth = None
        if seen.get("peak") is not None and seen.get("rss") is not None:
            growth = seen["peak"] - seen["rss"]
        return {"seconds": seconds, "memory_growth": growth}

    raw = interleaved(servers, rounds, run_one)
    results = {}
    for key, per_round in raw.items():
        growths = [r["memory_growth"] for r in per_round if r["memory_growth"] is not None]
        results[key] = {
            "median": statistics.median(r["seconds"] for r in per_round),
            "memory_growth": statistics.median(growths) if growths else None,
            "rounds": per_round,
        }
        servers[key].clear_maildir()
    if disk_dir:
        results["disk"] = {"median": statistics.median(
            disk_write(disk_dir, size) for _ in range(rounds))}
    return results


def _new_worker(server, known, timeout=5.0):
    """The process that serves the connection just made."""
    if server.single_process:
        return server.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [pid for pid in server.workers() if pid not in known]
        if fresh:
            return fresh[0]
        time.sleep(0.001)
    raise WorkloadError(f"{server.label}: no worker process for the connection")


def disk_write(directory, size):
    """Seconds to write ``size`` bytes in 1 MiB blocks and fsync the file."""
    path = os.path.join(directory, "disk-write-test")
    block = b"X" * (1 << 20)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < size:
            written += os.write(fd, block[:min(len(block), size - written)])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


def w4(servers, connections=500, rounds=5):
    """Connect-to-banner latency; p50 and p99 in seconds."""
    per_round = max(1, connections // rounds)

    def run_one(server):
        quiesce(server)
        return client.banner_latencies(server.port, per_round)

    raw = interleaved(servers, rounds, run_one)
    return {key: _percentiles([s for samples in value for s in samples])
            for key, value in raw.items()}


def w5(servers, connections=50, settle=0.5):
    """Private memory (USS) per connection with ``connections`` idle ones."""
    results = {}
    for key, server in servers.items():
        quiesce(server)
        baseline = procinfo.uss(server.pid)
        sessions = client.open_idle(server.port, connections)
        try:
            time.sleep(settle)
            workers = server.workers()
            if not server.single_process:
                sizes = [procinfo.uss(pid) for pid in workers]
                sizes = [size for size in sizes if size is not None]
                pss = [procinfo.pss(pid) for pid in workers]
                pss = [size for size in pss if size is not None]
                results[key] = {
                    "median": statistics.median(sizes) if sizes else None,
                    "pss_median": statistics.median(pss) if pss else None,
                    "workers": len(sizes),
                    "parent_uss": procinfo.uss(server.pid),
                }
            else:
                # one process for every connection: the growth, shared out
                grown = procinfo.uss(server.pid) - baseline
                results[key] = {"median": grown / connections, "workers": 0,
                                "parent_uss": procinfo.uss(server.pid)}
        finally:
            client.close_all(sessions)
    return results


def w6(servers, connections=100, rounds=5):
    """Connect-to-banner latency of the per-connection programs."""
    return w4(servers, connections, rounds)


def _percentiles(samples):
    ordered = sorted(samples)

    def pick(fraction):
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1],
            "median": pick(0.50), "samples": len(ordered)}
