"""What the benchmark reads about processes from /proc (Linux only).

* ``children(pid)`` — the pids of a process's direct children;
* ``uss(pid)`` — unique set size in bytes: the pages only this process
  maps (``Private_Clean + Private_Dirty`` of ``smaps_rollup``), what the
  machine gets back when the process ends;
* ``rss(pid)`` and ``peak_rss(pid)`` — resident and high-water resident
  size in bytes (``VmRSS``, ``VmHWM``);
* ``title(pid)`` — the process title (first word of the command line);
* ``cpu_seconds(pid)`` — user + system CPU time of the process and of the
  children it has reaped (``utime + stime + cutime + cstime``), so a
  forking server's parent accounts for all its finished workers;
* ``machine()`` — a description of the machine for the report.

Every reader returns None when the process is gone.
"""

import os
import platform
import sys

_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(word) for word in handle.read().split()]
    except FileNotFoundError:
        pass
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat_fields(int(entry))
            if stat and int(stat[1]) == pid:
                found.append(int(entry))
    return found


def uss(pid):
    fields = _smaps_rollup(pid)
    if fields is None:
        return None
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) * 1024


def pss(pid):
    fields = _smaps_rollup(pid)
    return None if fields is None else fields.get("Pss", 0) * 1024


def rss(pid):
    return _status_kb(pid, "VmRSS")


def title(pid):
    """The process title (the first word of its command line)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None


def peak_rss(pid):
    return _status_kb(pid, "VmHWM")


def cpu_seconds(pid):
    stat = _stat_fields(pid)
    if stat is None:
        return None
    # fields after the command: state=0, ppid=1 ... utime=11, stime=12,
    # cutime=13, cstime=14
    return sum(int(stat[index]) for index in (11, 12, 13, 14)) / _TICKS


def machine():
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _meminfo_mb(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "load_average": os.getloadavg(),
    }
    return info


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # the command may hold spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2:].split()


def _smaps_rollup(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            lines = handle.readlines()
    except OSError:
        return None
    fields = {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            fields[name] = int(words[0])
    return fields


def _status_kb(pid, name):
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_mb():
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None
