"""Protocol behaviour as data: every file in tests/transcripts is a
conversation (``C:`` what the client sends, ``S:`` what the server must
answer, byte for byte) run against a real session by this one test.

Header lines: ``plugins: <config/plugins line>`` (repeatable), ``config:
name=value`` (repeatable), ``# comment``. ``S: <closed>`` means the server
closed the connection. ``{tmp}`` stands for the test's temporary directory.
Consecutive ``C:`` lines are sent in one write (pipelining); the ``S:``
lines after them are read in order.
"""

import os

import pytest

HERE = os.path.join(os.path.dirname(__file__), "transcripts")
TRANSCRIPTS = sorted(name for name in os.listdir(HERE) if name.endswith(".txt"))


def parse(path, tmp):
    plugins, config, steps = [], {}, []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\n").replace("{tmp}", str(tmp))
            if not line or line.startswith("#"):
                continue
            kind, _, text = line.partition(":")
            text = text[1:] if text.startswith(" ") else text
            if kind == "plugins":
                plugins.append(text)
            elif kind == "config":
                name, _, value = text.partition("=")
                config[name] = value.split("|")
            elif kind in ("C", "S"):
                steps.append((kind, text))
            else:
                raise ValueError(f"{path}: bad line {line!r}")
    return plugins, config, steps


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript(name, smtp_session, tmp_path):
    plugins, config, steps = parse(os.path.join(HERE, name), tmp_path)
    client = smtp_session(plugins=plugins, config=config)
    assert client.greeting.code == 220
    pending = []
    for kind, text in steps:
        if kind == "C":
            pending.append(text + "\r\n")
            continue
        if pending:
            client.send("".join(pending))
            pending = []
        if text == "<closed>":
            assert client.closed(), f"{name}: server did not close"
            continue
        got = client.file.readline().decode("utf-8", "surrogateescape")
        assert got == text + "\r\n", f"{name}: expected {text!r}, got {got!r}"
    if pending:
        client.send("".join(pending))
