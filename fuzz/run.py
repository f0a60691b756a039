#!/usr/bin/env python3
"""Run the coverage-guided fuzzers (atheris) for a bounded time.

    python3 fuzz/run.py [--time SECONDS] [--workdir DIR] [--update-corpus] [TARGET ...]

Targets (one harness each in this folder, seed inputs in
``fuzz/corpus/<target>/``): ``parse_path`` (MAIL/RCPT arguments),
``address`` (address parsing and formatting), ``session`` (a whole SMTP
session fed arbitrary bytes) and ``data`` (the DATA reader against its
model). Default: all of them, ``--time`` seconds each (60).

Each target runs in its own process. New inputs it finds go to
``<workdir>/<target>/corpus`` (default workdir ``tmp/fuzz``), never into
the committed seeds; with ``--update-corpus`` the seeds are then merged
with what was found (libFuzzer's ``-merge=1``: only inputs that add
coverage are kept). An input that breaks an invariant is saved as
``<workdir>/<target>/crash-<sha1>`` and the line to replay it is printed:

    python3 fuzz/<target>.py <workdir>/<target>/crash-<sha1>

Exit status: 0 when every target ran its time without a crash, 1
otherwise (2 when atheris is not installed).
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# target -> the longest input libFuzzer builds
TARGETS = {"parse_path": 1024, "address": 512, "session": 8192, "data": 8192}
FINDINGS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"one or more of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--time", type=int, default=60, metavar="SECONDS",
                        help="how long to fuzz each target (default 60)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "tmp", "fuzz"),
                        help="where found inputs, crashes and logs go (default tmp/fuzz)")
    parser.add_argument("--update-corpus", action="store_true",
                        help="merge what was found into fuzz/corpus/<target>")
    options = parser.parse_args(argv)
    unknown = [t for t in options.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]}; known: {', '.join(TARGETS)}")
    if options.time < 1:
        parser.error("--time must be at least 1 second")
    return options


def run_target(target, seconds, workdir):
    """Fuzz one target; returns (ok, summary line, findings)."""
    home = os.path.join(workdir, target)
    found = os.path.join(home, "corpus")
    os.makedirs(found, exist_ok=True)
    for old in glob.glob(os.path.join(home, "*")):
        if os.path.basename(old).startswith(FINDINGS):
            os.unlink(old)
    log_path = os.path.join(home, "fuzz.log")
    command = [sys.executable, os.path.join(HERE, f"{target}.py"), found,
               os.path.join(HERE, "corpus", target),
               f"-max_total_time={seconds}", f"-max_len={TARGETS[target]}",
               "-timeout=20", "-rss_limit_mb=2048", "-print_final_stats=1",
               f"-artifact_prefix={home}{os.sep}"]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        # Generous wall clock: libFuzzer stops itself at max_total_time.
        try:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=ROOT, timeout=seconds * 2 + 120).returncode
        except subprocess.TimeoutExpired:
            status = "hung"
    elapsed = time.monotonic() - started
    with open(log_path, "rb") as log:
        output = log.read().decode("utf-8", "replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
    coverage = re.findall(r"cov: (\d+)", output)
    findings = sorted(path for path in glob.glob(os.path.join(home, "*"))
                      if os.path.basename(path).startswith(FINDINGS))
    ok = status == 0 and not findings
    summary = (f"{target:<11} {'ok' if ok else 'FAILED':<7} "
               f"{runs[-1] if runs else '?':>9} runs  "
               f"cov {coverage[-1] if coverage else '?':>5}  {elapsed:5.0f} s  "
               f"exit {status}  log {os.path.relpath(log_path, ROOT)}")
    return ok, summary, findings, command


def merge(target, workdir):
    """Keep in the seeds whatever found input adds coverage.

    libFuzzer's merge runs the harness again as a program (its ``#!`` line
    names ``python3``): this interpreter's directory goes first on PATH so
    that it is the one found."""
    seeds = os.path.join(HERE, "corpus", target)
    found = os.path.join(workdir, target, "corpus")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    log_path = os.path.join(workdir, target, "merge.log")
    with open(log_path, "wb") as log:
        subprocess.run([sys.executable, os.path.join(HERE, f"{target}.py"), "-merge=1",
                        seeds, found], cwd=ROOT, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=False)
    with open(log_path, "rb") as log:
        added = re.findall(rb"MERGE-OUTER: (\d+) new files", log.read())
    print(f"    merged {added[-1].decode() if added else '?'} inputs into "
          f"fuzz/corpus/{target}", flush=True)


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.stderr.write("fuzz/run.py: atheris is not installed "
                         "(pip install atheris, or make fuzz)\n")
        return 2
    targets = options.targets or list(TARGETS)
    workdir = os.path.abspath(options.workdir)
    print(f"fuzzing {', '.join(targets)} for {options.time} s each; work in "
          f"{os.path.relpath(workdir, ROOT)}", flush=True)
    failed = []
    for target in targets:
        ok, summary, findings, command = run_target(target, options.time, workdir)
        print(summary, flush=True)
        for path in findings:
            print(f"    replay: {sys.executable} fuzz/{target}.py "
                  f"{os.path.relpath(path, ROOT)}", flush=True)
        if not ok:
            failed.append(target)
            tail = open(os.path.join(workdir, target, "fuzz.log"), "rb").read()[-3000:]
            print(tail.decode("utf-8", "replace"), flush=True)
        elif options.update_corpus:
            merge(target, workdir)
    if failed:
        print(f"crashes or errors in: {', '.join(failed)}")
        return 1
    print("no crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
