"""loop: Received + Delivered-To hops counted at data_post."""

import pytest

from conftest import captured_messages


@pytest.fixture
def session(plugin_session, queue_dir):
    def factory(args=""):
        return plugin_session(["returns rcpt OK", f"loop {args}".strip(),
                               f"capture {queue_dir}"])
    return factory


def message(received=0, delivered_to=0):
    fields = ["Received: from hop%d.example by hop%d.example" % (n, n + 1)
              for n in range(received)]
    fields += [f"Delivered-To: user{n}@example.test" for n in range(delivered_to)]
    return "".join(f + "\r\n" for f in fields) + "Subject: loop\r\n\r\nbody\r\n.\r\n"


def send(client, text, helo="EHLO client.example.net"):
    return client.send_message("a@sender.example", ["b@example.test"], text, helo=helo)


def test_below_the_limit_passes(session, queue_dir):
    client = session("5")
    # 3 + 1 hops in the message, plus our own Received = 5: refused; 2 + 1 + 1 = 4 passes.
    assert send(client, message(2, 1)).code == 250
    assert client.log_contains("(data_post) loop: pass, 4 hops")


def test_at_the_limit_is_refused_counting_our_own_received(session, queue_dir):
    client = session("5")
    assert send(client, message(3, 1)) == (552, ["5.4.6 Too many hops (#5.4.6)"])
    assert captured_messages(queue_dir) == []
    assert client.log_contains("loop: fail, 5 hops (max 5)")


def test_helo_reply_text(session):
    client = session("2")
    assert send(client, message(1), helo="HELO client.example.net") == (
        552, ["Too many hops (#5.4.6)"])


def test_default_is_100(session):
    client = session()
    assert send(client, message(98, 0)).code == 250
    assert send(client, message(50, 49), helo=None).code == 552


@pytest.mark.parametrize("args, warning", [
    ("many", "Invalid max_hops value -- using default"),
    ("0", "Invalid max_hops value -- using default"),
    ("5 6", "Ignoring additional arguments"),
])
def test_bad_arguments_warn(session, args, warning):
    client = session(args)
    assert client.log_contains(f"loop: {warning}")
    expected = 5 if args == "5 6" else 100
    assert client.session.app.dispatcher.plugins[1].max_hops == expected
