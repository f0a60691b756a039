"""Hardening promises of docs/SECURITY.md that no other test file proves:
replies a plugin cannot forge, trace fields a client cannot inject into,
and the gaps found by fuzzing, now closed."""

import os
import subprocess
import sys
import textwrap

import pytest

from hardening_fixtures import Session, build_app, queued_files, queued_number, strip_received

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = ("EHLO client.example.net", "MAIL FROM:<sender@example.net>",
         "RCPT TO:<rcpt@example.org>")


@pytest.fixture
def site(tmp_path):
    def factory(*plugins, **files):
        queue = tmp_path / "queue"
        app = build_app(tmp_path / "config", list(plugins) + ["rcpt_ok", f"capture {queue}"],
                        {"rcpthosts": ["example.org"], **files})
        app.queue_dir = queue
        return app
    return factory


def open_session(app):
    session = Session(app)
    for line in START:
        assert session.cmd(line).code == 250, line
    return session


def test_a_plugin_message_cannot_forge_a_second_reply(site):
    """A line break in a plugin's message makes a multi-line reply with the
    plugin's code on every line, never a reply of its own."""
    app = site("returns mail DENY no\\n250 2.1.0 sender OK")
    session = Session(app)
    try:
        assert session.cmd("EHLO client.example.net").code == 250
        reply = session.cmd("MAIL FROM:<sender@example.net>")
        assert reply == (550, ["5.7.1 no", "5.7.1 250 2.1.0 sender OK"])
        assert session.cmd("NOOP") == (250, ["2.0.0 OK"])
    finally:
        session.finish()


def test_crash_text_never_reaches_the_client(site):
    app = site("returns rcpt raise")
    session = Session(app)
    try:
        for line in START[:2]:
            session.cmd(line)
        reply = session.cmd("RCPT TO:<rcpt@example.org>")
        assert reply == (450, ["4.7.1 Internal error - try again later"])
        assert "on purpose" not in reply.text
    finally:
        log = session.finish()
    assert any("plugin failure on purpose" in line for line in log)


@pytest.mark.parametrize("hello", [
    "EHLO a.example\rX-Injected: yes",
    "EHLO a.example\x0bX-Injected: yes",
    "EHLO a.example\x0cX-Injected: yes",
])
def test_helo_cannot_add_header_fields(site, hello):
    """The HELO name lands in the Received field: white space of any kind
    ends it, so it cannot start a header line of its own. (A bare CR may
    also be refused outright, with 500.)"""
    session = Session(site())
    try:
        reply = session.cmd(hello)
        if reply.code == 500 and "\r" in hello:
            return
        assert reply.code == 250, reply
        session.cmd("MAIL FROM:<sender@example.net>")
        session.cmd("RCPT TO:<rcpt@example.org>")
        assert session.cmd("DATA").code == 354
        session.send("Subject: x\r\n\r\nbody\r\n.\r\n")
        queued = session.reply()
        message, _ = queued_files(session.app.queue_dir, queued_number(queued))
    finally:
        session.finish()
    header = message.split(b"\n\n")[0]
    assert b"X-Injected" not in header and b"\r" not in header
    assert strip_received(message) == b"Subject: x\n\nbody\n"


@pytest.mark.parametrize("line", [
    "RCPT TO:<user\r@example.org>",
    "RCPT TO:<x\rRCPT TO:<victim@victim.example>\r@example.org>",
    "NOOP\r",
])
def test_bare_cr_inside_a_command_is_refused(site, line):
    """A CR that is not part of the line's CR LF is refused like a NUL, so
    no envelope address carrying one reaches the queue (a program behind
    it might take the CR for a line end)."""
    session = open_session(site())
    try:
        reply = session.cmd(line)
        assert reply.code == 500 and "CR" in reply.text, reply
    finally:
        session.finish()


MEMORY_PROBE = textwrap.dedent(r"""
    import pathlib, sys, tempfile
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from hardening_fixtures import Session, build_app, queued_files, queued_number, strip_received

    def peak_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    root = pathlib.Path(tempfile.mkdtemp())
    app = build_app(root / "config", ["rcpt_ok", f"capture {root / 'queue'}"],
                    {"rcpthosts": ["example.org"], "loglevel": "3"})
    session = Session(app)
    session.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@example.org>\r\n"
                 b"DATA\r\n")
    assert [session.reply().code for _ in range(4)] == [250, 250, 250, 354]
    before = peak_kb()
    fields = b"X: a\r\n" * 262144
    session.send(fields + b"\r\nbody\r\n.\r\n")
    reply = session.reply()
    growth = (peak_kb() - before) // 1024
    message, _ = queued_files(root / "queue", queued_number(reply))
    exact = strip_received(message) == fields.replace(b"\r\n", b"\n") + b"\nbody\n"
    session.finish()
    print(growth, exact)
""")


def test_header_flood_does_not_grow_the_worker(tmp_path):
    """A message of 262144 one-letter header fields (1.5 MB, under any
    databytes) is stored byte for byte, and the process serving it grows
    by less than 16 MB (the header block the server keeps is capped)."""
    output = subprocess.run([sys.executable, "-c", MEMORY_PROBE, ROOT], capture_output=True,
                            text=True, timeout=120, cwd=str(tmp_path))
    assert output.returncode == 0, output.stderr
    growth, exact = output.stdout.split()
    assert exact == "True"
    assert int(growth) < 16, f"grew by {growth} MB"


def test_every_test_named_here_exists():
    """docs/SECURITY.md points at tests as ``tests/<file>.py::<name>`` (and
    ``::<name>`` for more tests of the file named last); each must exist."""
    import re
    with open(os.path.join(ROOT, "docs", "SECURITY.md")) as handle:
        text = handle.read()
    missing = []
    current = None
    named = 0
    for match in re.finditer(r"`(tests/[\w/]+\.py)?::(test_\w+)`", text):
        current = match[1] or current
        assert current, f"::{match[2]} before any file"
        with open(os.path.join(ROOT, current)) as handle:
            source = handle.read()
        named += 1
        if not re.search(rf"^def {match[2]}\(", source, re.M):
            missing.append(f"{current}::{match[2]}")
    assert named > 40
    assert missing == []


@pytest.mark.parametrize("target", ["parse_path", "address", "session", "data"])
def test_fuzz_seeds_pass_their_harness(target):
    """Every committed seed of ``fuzz/corpus/<target>`` passes the harness's
    checks (what ``make fuzz`` starts from must not be a crash already)."""
    pytest.importorskip("atheris", reason="atheris is not installed (make fuzz installs it)")
    import importlib.util
    fuzz_dir = os.path.join(ROOT, "fuzz")
    if fuzz_dir not in sys.path:
        sys.path.insert(0, fuzz_dir)
    spec = importlib.util.spec_from_file_location(f"fuzz_{target}",
                                                  os.path.join(fuzz_dir, f"{target}.py"))
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    seeds = sorted(os.listdir(os.path.join(fuzz_dir, "corpus", target)))
    assert len(seeds) >= 10
    for name in seeds:
        with open(os.path.join(fuzz_dir, "corpus", target, name), "rb") as handle:
            harness.check(handle.read())
