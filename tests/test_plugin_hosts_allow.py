"""hosts_allow: the per-IP limit (with karma_history) and the hosts_allow
file, run through the dispatcher exactly as the forkserver parent runs the
pre-connection hook, plus the reply the parent writes to the socket."""

import socket

import pytest

from qpsmtpd.connection import Connection
from qpsmtpd.constants import DECLINED, DENY, DENY_DISCONNECT, DENYSOFT
from qpsmtpd_forkserver import PreConnection, Server, parse_options

HOSTS_ALLOW = [
    "192.0.2.4        DECLINED",
    "192.0.2.0/24     DENY Sorry, known spam only source",
    "2001:db8:bad::/48  DENYSOFT   Try again tomorrow",
    "198.51.100.7/24  deny_disconnect",
    "203.0.113.0/24   BOGUS whatever",
    "203.0.0.0/8      DENY never reached for 203.0.113.x",
    "garbage          DENY bad line",
    "onlyone",
]


@pytest.fixture
def app(make_app):
    return make_app(["hosts_allow"], {"hosts_allow": HOSTS_ALLOW})


def pre_connection(app, remote_ip, max_conn_ip=0, child_addrs=(), notes=None):
    connection = Connection(remote_ip=remote_ip, remote_port=40000,
                            local_ip="192.0.2.1", local_port=25)
    connection.notes.update(notes or {})
    info = {"remote_ip": remote_ip, "remote_port": 40000, "local_ip": "192.0.2.1",
            "local_port": 25, "max_conn_ip": max_conn_ip, "child_addrs": list(child_addrs)}
    return app.dispatcher.run_hooks(PreConnection(app, connection), "pre-connection", info)


# -- per-IP limit -----------------------------------------------------------------

def test_too_many_connections(app):
    result = pre_connection(app, "10.0.0.77", 2, ["10.0.0.77", "10.0.0.9", "10.0.0.77"])
    assert result.code == DENYSOFT
    assert result.messages == ("too many connections from 10.0.0.77, try again later",)
    assert any("(pre-connection) hosts_allow: fail, too many connections from "
               "10.0.0.77 (3 > 2)" in line for line in app.captured_log)


def test_under_the_limit(app):
    assert pre_connection(app, "10.0.0.77", 3, ["10.0.0.77", "10.0.0.77"]).code == DECLINED
    assert pre_connection(app, "10.0.0.77", 1, ["10.0.0.9", None]).code == DECLINED


def test_no_limit_when_max_is_zero(app):
    assert pre_connection(app, "10.0.0.77", 0, ["10.0.0.77"] * 50).code == DECLINED


def test_ipv6_addresses_are_compared_normalised(app):
    children = ["2001:0db8:0:0::1", "2001:DB8::1", "2001:db8::2"]
    result = pre_connection(app, "2001:db8::1", 2, children)
    assert result.code == DENYSOFT
    assert result.messages == ("too many connections from 2001:db8::1, try again later",)


def test_ipv4_mapped_children_count(app):
    result = pre_connection(app, "10.0.0.77", 1, ["::ffff:10.0.0.77"])
    assert result.code == DENYSOFT


@pytest.mark.parametrize("history, children, code", [
    (6, 4, DECLINED),     # good history: limit 2 + 3 = 5, this is the 5th
    (6, 5, DENYSOFT),
    (3, 1, DECLINED),     # neutral: limit unchanged (2)
    (3, 2, DENYSOFT),
    (0, 0, DECLINED),     # no good history: limit 1
    (0, 1, DENYSOFT),
    (-4, 1, DENYSOFT),
])
def test_karma_history_changes_the_limit(app, history, children, code):
    result = pre_connection(app, "10.0.0.77", 2, ["10.0.0.77"] * children,
                            notes={"karma_history": history})
    assert result.code == code


def test_limit_comes_before_the_file(app):
    # 192.0.2.4 is exempted by the file, but not from the per-IP limit.
    assert pre_connection(app, "192.0.2.4", 1, ["192.0.2.4"]).code == DENYSOFT


# -- the hosts_allow file ----------------------------------------------------------

@pytest.mark.parametrize("ip, code, messages", [
    ("192.0.2.4", DECLINED, ()),                       # first match wins
    ("192.0.2.5", DENY, ("Sorry, known spam only source",)),
    ("192.0.2.255", DENY, ("Sorry, known spam only source",)),
    ("2001:db8:bad:1::9", DENYSOFT, ("Try again tomorrow",)),
    ("2001:db8:bee::1", DECLINED, ()),
    ("198.51.100.200", DENY_DISCONNECT, ()),           # host bits in the entry
    ("203.0.113.5", DECLINED, ("whatever",)),          # unknown constant: DECLINED
    ("203.0.114.5", DENY, ("never reached for 203.0.113.x",)),
    ("10.1.2.3", DECLINED, ()),
])
def test_hosts_allow_file(app, ip, code, messages):
    result = pre_connection(app, ip, 5)
    assert (result.code, result.messages) == (code, messages)


def test_deny_line_is_logged(app):
    pre_connection(app, "192.0.2.5")
    assert any("hosts_allow: fail, Sorry, known spam only source" in line
               for line in app.captured_log)


def test_bad_lines_are_skipped(app):
    assert pre_connection(app, "10.1.2.3").code == DECLINED
    assert any("ignoring invalid network in hosts_allow: garbage" in line
               for line in app.captured_log)


def test_no_file(make_app):
    app = make_app(["hosts_allow"])
    assert pre_connection(app, "192.0.2.5", 5).code == DECLINED


def test_unparsable_remote_ip(app):
    assert pre_connection(app, "not-an-ip", 1, ["not-an-ip"]).code == DENYSOFT
    assert pre_connection(app, "", 0).code == DECLINED


# -- what the forkserver parent sends ---------------------------------------------

@pytest.mark.parametrize("ip, children, reply", [
    ("10.0.0.77", ["10.0.0.77"], b"451 too many connections from 10.0.0.77, "
                                   b"try again later\r\n"),
    ("192.0.2.5", [], b"550 Sorry, known spam only source\r\n"),
    ("2001:db8:bad::1", [], b"451 Try again tomorrow\r\n"),
])
def test_forkserver_reply(app, ip, children, reply):
    server = Server(parse_options(["--max-from-ip", "1"]), app)
    server.children = {1000 + n: child for n, child in enumerate(children)}
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    connection = Connection(remote_ip=ip, remote_port=40000, local_ip="192.0.2.1",
                            local_port=25)
    try:
        assert server.pre_connection(ours, connection) is False
        assert theirs.recv(1000) == reply
        assert theirs.recv(1000) == b""     # and the socket is closed
    finally:
        ours.close()
        theirs.close()
