"""stunnel: the PROXY v1 line from a local proxy, over real sessions; refusals
for outsiders, late or repeated lines and malformed lines; other unknown
commands reach the later plugins."""

import re

import pytest

from conftest import captured_messages
from qpsmtpd.plugin import PluginError

PROXY_LINE = "PROXY TCP4 198.51.100.7 192.0.2.1 50060 465"


@pytest.fixture
def proxied(plugin_session, queue_dir):
    """A session from the local proxy (127.0.0.1 unless told otherwise)."""
    def factory(plugins=("stunnel proxy on", "returns rcpt OK", "capture {queue}"),
                remote_ip="127.0.0.1", config=None, **kwargs):
        plugins = [line.format(queue=queue_dir) for line in plugins]
        client = plugin_session(plugins, config, remote_ip=remote_ip, **kwargs)
        assert client.greeting.code == 220
        return client
    return factory


def connection(client):
    return client.session.connection


# -- accepted lines ----------------------------------------------------------

def test_proxy_line_sets_the_peer_and_sends_no_reply(proxied, queue_dir):
    client = proxied()
    client.send(PROXY_LINE + "\r\n")
    # the next reply the client reads is HELO's: PROXY was answered with nothing
    assert client.cmd("HELO c.example") == \
        (250, ["mx.example.org Hi [198.51.100.7] [198.51.100.7]; "
               "I am so happy to meet you."])
    conn = connection(client)
    assert (conn.remote_ip, conn.remote_port, conn.local_ip, conn.local_port) == \
        ("198.51.100.7", 50060, "192.0.2.1", 465)
    assert conn.remote_host == conn.remote_info == "[198.51.100.7]"
    notes = conn.notes
    assert (notes["proxy"], notes["protocol"], notes["remote_ip"], notes["local_ip"],
            notes["remote_port"], notes["local_port"]) == \
        ("YES", "TCP4", "198.51.100.7", "192.0.2.1", 50060, 465)
    assert client.log_contains("(unrecognized_command) stunnel: pass, proxied "
                               "198.51.100.7:50060 -> 192.0.2.1:465 (TCP4)")

    assert client.cmd("MAIL FROM:<a@b.example>").code == 250
    assert client.cmd("RCPT TO:<c@d.example>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert client.reply() == (250, ["Queued! 0"])
    message = captured_messages(queue_dir)[0]
    assert re.search(rb"\nReceived: from \[198\.51\.100\.7\] \(HELO c\.example\) "
                     rb"\(198\.51\.100\.7\)\n by mx\.example\.org ", b"\n" + message)


def test_lower_case_verb_and_ipv6_proxy(proxied):
    client = proxied(remote_ip="::1")
    client.send("proxy TCP6 2001:db8::7 2001:db8::1 50060 25\r\n")
    reply = client.cmd("EHLO c.example")
    assert reply.lines[0] == "mx.example.org Hi [2001:db8::7] [2001:db8::7]"
    conn = connection(client)
    assert (conn.remote_ip, conn.local_ip, conn.notes["protocol"]) == \
        ("2001:db8::7", "2001:db8::1", "TCP6")


def test_proxy_unknown_keeps_the_connection_addresses(proxied):
    client = proxied()
    client.send("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n")
    assert client.cmd("HELO c.example").lines[0].startswith(
        "mx.example.org Hi client.example.net [127.0.0.1]")
    notes = connection(client).notes
    assert (notes["proxy"], notes["protocol"]) == ("YES", "UNKNOWN")
    assert "remote_ip" not in notes
    assert client.log_contains("stunnel: pass, PROXY UNKNOWN, keeping 127.0.0.1")


def test_localhost_relay_rights_are_not_inherited(proxied):
    plugins = ("stunnel proxy on", "rcpt_ok")
    config = {"rcpthosts": ["example.org"]}
    direct = proxied(plugins, relay_client=True, config=config)
    direct.cmd("HELO c.example")
    direct.cmd("MAIL FROM:<a@b.example>")
    assert direct.cmd("RCPT TO:<x@elsewhere.example>").code == 250

    client = proxied(plugins, relay_client=True, config=config)
    client.send(PROXY_LINE + "\r\n")
    client.cmd("HELO c.example")
    client.cmd("MAIL FROM:<a@b.example>")
    assert client.cmd("RCPT TO:<x@elsewhere.example>") == \
        (550, ["Relaying denied (#5.7.1)"])
    assert client.cmd("RCPT TO:<x@example.org>").code == 250
    assert connection(client).relay_client is False


# -- refusals ----------------------------------------------------------------

def test_proxy_from_an_outside_client_is_refused(proxied):
    client = proxied(remote_ip="192.0.2.10")
    assert client.cmd(PROXY_LINE) == (500, ["PROXY not accepted from 192.0.2.10"])
    conn = connection(client)
    assert conn.remote_ip == "192.0.2.10" and conn.remote_host == "client.example.net"
    assert "proxy" not in conn.notes
    assert client.log_contains("stunnel: fail, PROXY from 192.0.2.10, not a local proxy")
    assert client.cmd("HELO c.example").lines[0].startswith(
        "mx.example.org Hi client.example.net [192.0.2.10]")


def test_second_proxy_line_is_refused(proxied):
    client = proxied()
    client.send(PROXY_LINE + "\r\n")
    assert client.cmd("PROXY TCP4 203.0.113.9 192.0.2.1 1 25") == \
        (500, ["PROXY only allowed once, before any other command"])
    assert connection(client).remote_ip == "198.51.100.7"


@pytest.mark.parametrize("first", [
    "HELO c.example", "EHLO c.example", "NOOP", "RSET", "HELP", "VRFY x",
    "XYZZY", "RCPT TO:<c@d.example>", "DATA"])
def test_proxy_after_another_command_is_refused(proxied, first):
    client = proxied()
    assert client.cmd(first).code != 0
    reply = client.cmd(PROXY_LINE)
    assert reply.code == 500
    assert reply.lines[0].endswith("PROXY only allowed once, before any other command")
    assert connection(client).remote_ip == "127.0.0.1"
    assert client.log_contains("stunnel: fail, PROXY line too late")


@pytest.mark.parametrize("line, why", [
    ("PROXY", "unknown protocol ''"),
    ("PROXY TCP5 198.51.100.7 192.0.2.1 1 25", "unknown protocol 'TCP5'"),
    ("PROXY tcp4 198.51.100.7 192.0.2.1 1 25", "unknown protocol 'tcp4'"),
    ("PROXY TCP4", "expected: PROXY <protocol>"),
    ("PROXY TCP4 198.51.100.7 192.0.2.1 50060", "expected: PROXY <protocol>"),
    ("PROXY TCP4 198.51.100.7 192.0.2.1 50060 25 extra", "expected: PROXY <protocol>"),
    ("PROXY TCP4 198.51.100.7  192.0.2.1 50060 25", "expected: PROXY <protocol>"),
    ("PROXY TCP4 198.51.100.256 192.0.2.1 1 25", "'198.51.100.256' is not an TCP4"),
    ("PROXY TCP4 2001:db8::7 192.0.2.1 1 25", "'2001:db8::7' is not an TCP4"),
    ("PROXY TCP6 198.51.100.7 2001:db8::1 1 25", "'198.51.100.7' is not an TCP6"),
    ("PROXY TCP4 198.51.100.7 192.0.2.1 65536 25", "'65536' is not a port"),
    ("PROXY TCP4 198.51.100.7 192.0.2.1 -1 25", "'-1' is not a port"),
    ("PROXY TCP4 198.51.100.7 192.0.2.1 1 025", "'025' is not a port"),
    ("PROXY TCP4 198.51.100.7 192.0.2.1 1 ２５", "'２５' is not a port"),
    ("PROXY TCP6 " + "a" * 50 + " " + "b" * 50 + " 1 2", "line longer than 107 bytes"),
])
def test_malformed_line_gets_501_and_the_connection_closes(proxied, line, why):
    client = proxied()
    reply = client.cmd(line)
    assert reply.code == 501
    assert reply.lines[0].startswith("Syntax error in PROXY line: " + why)
    assert client.closed()
    conn = connection(client)
    assert conn.remote_ip == "127.0.0.1" and "proxy" not in conn.notes
    assert client.log_contains("stunnel: fail, malformed PROXY line: " + why)


def test_other_unknown_commands_reach_later_plugins(proxied):
    # the original answered OK here, so count_unrecognized_commands never ran
    client = proxied(("stunnel proxy on", "count_unrecognized_commands 2"))
    assert client.cmd("FOO") == (500, ["Unrecognized command"])
    assert client.cmd("BAR") == \
        (521, ["Closing connection, 2 unrecognized commands. "
               "Perhaps you should read RFC 2821?"])
    assert client.closed()


# -- arguments ---------------------------------------------------------------

@pytest.mark.parametrize("line", ["stunnel", "stunnel proxy off"])
def test_without_proxy_on_the_plugin_does_nothing(proxied, line):
    client = proxied((line,))
    assert client.cmd(PROXY_LINE) == (500, ["Unrecognized command"])
    assert connection(client).remote_ip == "127.0.0.1"
    assert client.log_contains("stunnel: proxy protocol disabled")


def test_odd_arguments_stop_start_up(make_app):
    with pytest.raises(PluginError, match="Bad arguments"):
        make_app(["stunnel proxy"])
