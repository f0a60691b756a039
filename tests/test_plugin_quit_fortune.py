"""quit_fortune: a fortune cookie in the 221 reply, with the real fortune(6)."""

import os

import pytest

FORTUNE = "/usr/games/fortune"

needs_fortune = pytest.mark.skipif(
    not os.access(FORTUNE, os.X_OK),
    reason=f"{FORTUNE} is not installed (Debian/Ubuntu: apt-get install fortune-mod)")


@needs_fortune
def test_helo_session_gets_a_fortune(smtp_session):
    client = smtp_session(["quit_fortune"])
    assert client.cmd("HELO client.example.net").code == 250
    reply = client.cmd("QUIT")
    assert reply.code == 221
    assert reply.lines[0] == "mx.example.org closing connection."
    assert len(reply.lines) >= 2
    assert all(line.startswith("  / ") for line in reply.lines[1:])
    assert client.closed()
    assert client.log_contains("click, disconnecting")


@needs_fortune
def test_session_without_greeting_gets_a_fortune_too(smtp_session):
    client = smtp_session(["quit_fortune"])
    assert client.cmd("NOOP").code == 250
    reply = client.cmd("QUIT")
    assert reply.lines[0] == "mx.example.org closing connection."
    assert reply.lines[1].startswith("  / ")


def test_ehlo_session_gets_the_plain_goodbye(smtp_session):
    client = smtp_session(["quit_fortune"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("QUIT") == (
        221, ["2.0.0 mx.example.org closing connection. Have a wonderful day."])
    assert client.closed()


@needs_fortune
def test_after_junk_and_a_failed_helo_still_a_fortune(smtp_session):
    client = smtp_session(["quit_fortune"])
    assert client.cmd("HELO").code == 501          # no host: not greeted
    assert client.cmd("\x7f\x7f").code == 500
    reply = client.cmd("QUIT extra words")
    assert reply.code == 221
    assert reply.lines[0] == "mx.example.org closing connection."
