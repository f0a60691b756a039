"""relay: who is a relay client (norelayclients, RELAYCLIENT, relayclients,
morerelayclients.cdb, ::1) and the ``only 1`` mode, over real sessions."""

import os

import pytest

from qpsmtpd.cdb import write_cdb
from qpsmtpd.plugin import PluginError

RELAYCLIENTS = [
    "# Format is IP, or IP part with trailing dot",
    "127.0.0.1 ",
    " 192.0. ",
    "198.51.100.0/24",
    "fdda:b13d:e431:ae06::/64",
    "fdda:b13d:e431:be17::",
    "2001:DB8:AAAA:",
]
NORELAYCLIENTS = ["192.0.99.5", "192.0.98."]


@pytest.fixture(autouse=True)
def no_relayclient_env(monkeypatch):
    monkeypatch.delenv("RELAYCLIENT", raising=False)


@pytest.fixture
def relay_app(make_app):
    def factory(plugins=("relay", "rcpt_ok"), **files):
        config = {"rcpthosts": ["example.org"], "relayclients": RELAYCLIENTS,
                  "norelayclients": NORELAYCLIENTS}
        config.update(files)
        return make_app(list(plugins), config)
    return factory


def connect(smtp_session, app, ip):
    client = smtp_session(app=app, remote_ip=ip)
    assert client.greeting.code == 220
    return client


def is_relay_client(smtp_session, app, ip):
    return connect(smtp_session, app, ip).session.connection.relay_client


# -- relayclients: addresses and prefixes --------------------------------------

def test_octet_match_lets_the_client_relay(smtp_session, relay_app):
    client = connect(smtp_session, relay_app(), "192.0.1.1")
    assert client.session.connection.relay_client is True
    assert client.log_contains("pass, octet match in relayclients (192.0.)")
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    reply = client.cmd("RCPT TO:<someone@elsewhere.example>")
    assert reply == (250, ["2.1.5 <someone@elsewhere.example>, recipient ok"])


@pytest.mark.parametrize("ip", ["192.169.1.1", "10.10.10.10", "192.1.0.1"])
def test_no_match_is_not_a_relay_client(smtp_session, relay_app, ip):
    client = connect(smtp_session, relay_app(), ip)
    assert client.session.connection.relay_client is False
    assert client.log_contains("(connect) relay: skip, no match")
    client.cmd("HELO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<someone@elsewhere.example>") == \
        (550, ["Relaying denied (#5.7.1)"])


def test_full_address_entry(smtp_session, relay_app):
    client = connect(smtp_session, relay_app(), "127.0.0.1")
    assert client.session.connection.relay_client is True
    assert client.log_contains("pass, octet match in relayclients (127.0.0.1)")


@pytest.mark.parametrize("ip", ["2001:db8:aaaa::1", "2001:0DB8:AAAA:1:2:3:4:5"])
def test_ipv6_prefix_entry(smtp_session, relay_app, ip):
    # The entry is written in capitals; hex is compared in lower case.
    client = connect(smtp_session, relay_app(), ip)
    assert client.session.connection.relay_client is True
    assert client.log_contains("pass, octet match in relayclients (2001:db8:aaaa:)")


def test_ipv4_client_on_an_ipv6_socket(smtp_session, relay_app):
    assert is_relay_client(smtp_session, relay_app(), "::ffff:192.0.1.1") is True


def test_localhost_ipv6_always_relays(smtp_session, relay_app):
    client = connect(smtp_session, relay_app(relayclients=["# nobody"]), "::1")
    assert client.session.connection.relay_client is True
    assert client.log_contains("pass, octet matched localhost (::1)")


# -- CIDR --------------------------------------------------------------------------

@pytest.mark.parametrize("ip, expected", [
    ("198.51.100.1", True),
    ("198.51.100.0", True),      # network address: the original missed it
    ("198.51.100.255", True),    # broadcast address: the original missed it
    ("198.51.101.0", False),
    ("198.51.99.255", False),
])
def test_cidr_ipv4_is_inclusive(smtp_session, relay_app, ip, expected):
    client = connect(smtp_session, relay_app(), ip)
    assert client.session.connection.relay_client is expected
    assert client.log_contains(f"pass, cidr match ({ip})") is expected


def test_cidr_ipv4_other_network(smtp_session, relay_app):
    app = relay_app(relayclients=["192.168.0.0/24"])
    assert is_relay_client(smtp_session, app, "192.168.1.1") is False
    assert is_relay_client(smtp_session, app, "192.168.0.1") is True


@pytest.mark.parametrize("ip, expected", [
    ("fdda:b13d:e431:ae06:00a1::", True),
    ("fdda:b13d:e431:ae06::", True),
    ("fdda:b13d:e431:ae06:ffff:ffff:ffff:ffff", True),
    ("fdda:b13d:e431:ae07::1", False),
    # a plain address entry matches only itself
    ("fdda:b13d:e431:be17::", True),
    ("fdda:b13d:e431:be17::1", False),
])
def test_cidr_ipv6(smtp_session, relay_app, ip, expected):
    assert is_relay_client(smtp_session, relay_app(), ip) is expected


# -- norelayclients ----------------------------------------------------------------

@pytest.mark.parametrize("ip", ["192.0.99.5", "192.0.98.1", "192.0.98.255"])
def test_norelayclients_match(smtp_session, relay_app, ip):
    client = connect(smtp_session, relay_app(), ip)
    assert client.session.connection.relay_client is False
    assert client.log_contains("fail, disabled by norelayclients")
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<x@elsewhere.example>").code == 550


@pytest.mark.parametrize("ip", ["192.0.99.7", "192.0.109.7"])
def test_norelayclients_no_match(smtp_session, relay_app, ip):
    # Not in norelayclients, so relayclients' "192.0." lets them relay.
    client = connect(smtp_session, relay_app(), ip)
    assert client.session.connection.relay_client is True
    assert not client.log_contains("disabled by norelayclients")


def test_norelayclients_beats_the_environment(smtp_session, relay_app, monkeypatch):
    monkeypatch.setenv("RELAYCLIENT", "")
    app = relay_app(relayclients=["# none"])
    client = connect(smtp_session, app, "192.0.99.5")
    assert client.session.connection.relay_client is False
    assert client.log_contains("fail, disabled by norelayclients (192.0.99.5)")
    # For this connection only: a worker serves the next one with the
    # environment it was started with.
    assert os.environ.get("RELAYCLIENT") == ""
    client.close()
    assert is_relay_client(smtp_session, app, "203.0.113.9") is True


# -- RELAYCLIENT -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "1"])
def test_relayclient_environment(smtp_session, relay_app, monkeypatch, value):
    # tcpserver rules set RELAYCLIENT="" for relay clients: defined is enough.
    monkeypatch.setenv("RELAYCLIENT", value)
    client = connect(smtp_session, relay_app(relayclients=["# none"]), "203.0.113.9")
    assert client.session.connection.relay_client is True
    assert client.log_contains("(connect) relay: pass, enabled by env")


# -- morerelayclients.cdb -----------------------------------------------------------

@pytest.mark.parametrize("ip, key", [
    ("203.0.113.7", "203.0.113.7"),
    ("203.0.114.9", "203.0.114."),
    ("2001:db8:5::7", "2001:db8:5::7"),
    ("2001:db8:6::1", "2001:db8:6:"),
    ("2001:db8:7::1", "2001:0db8:0007"),    # qpsmtpd 1.0's zero-padded prefixes
])
def test_morerelayclients(smtp_session, relay_app, tmp_path, ip, key):
    app = relay_app(relayclients=["# none"])
    keys = ["203.0.113.7", "203.0.114.", "2001:db8:5::7", "2001:db8:6:", "2001:0db8:0007"]
    write_cdb(str(tmp_path / "config" / "morerelayclients.cdb"),
              {k.encode(): b"" for k in keys})
    client = connect(smtp_session, app, ip)
    assert client.session.connection.relay_client is True
    assert client.log_contains(f"pass, octet match in morerelayclients ({key})")


def test_morerelayclients_no_match(smtp_session, relay_app, tmp_path):
    app = relay_app(relayclients=["# none"])
    write_cdb(str(tmp_path / "config" / "morerelayclients.cdb"), {b"203.0.113.7": b""})
    assert is_relay_client(smtp_session, app, "203.0.113.70") is False


# -- parsed once per process --------------------------------------------------------

def test_files_are_parsed_once_and_again_after_an_edit(smtp_session, relay_app, tmp_path):
    app = relay_app(relayclients=["192.0.2.0/24", "198.51.100."])
    relay = app.dispatcher.plugins[0]
    plugin_globals = type(relay).hook_connect.__globals__
    parsed = []
    parse_relayclients, entry_set = relay.parse_relayclients, plugin_globals["_entry_set"]
    relay.parse_relayclients = lambda lines: parsed.append("relayclients") or \
        parse_relayclients(lines)
    plugin_globals["_entry_set"] = lambda lines: parsed.append("norelayclients") or \
        entry_set(lines)
    maps = []
    get_map = app.config.get_map
    app.config.get_map = lambda name: maps.append(name) or get_map(name)
    cdb = str(tmp_path / "config" / "morerelayclients.cdb")
    write_cdb(cdb, {b"203.0.113.7": b""})
    try:
        for ip, expected in (("192.0.2.9", True), ("198.51.100.1", True),
                             ("203.0.113.7", True), ("203.0.113.8", False)):
            assert is_relay_client(smtp_session, app, ip) is expected
        assert sorted(parsed) == ["norelayclients", "relayclients"]
        assert maps == ["morerelayclients"]

        (tmp_path / "config" / "relayclients").write_text("203.0.113.0/24\n")
        write_cdb(cdb, {b"192.0.2.": b"", b"10.": b""})
        assert is_relay_client(smtp_session, app, "203.0.113.8") is True
        assert is_relay_client(smtp_session, app, "192.0.2.9") is True    # from the map
        assert is_relay_client(smtp_session, app, "198.51.100.1") is False
        assert sorted(parsed) == ["norelayclients", "relayclients", "relayclients"]
        assert maps == ["morerelayclients", "morerelayclients"]
    finally:
        plugin_globals["_entry_set"] = entry_set


# -- relay only ---------------------------------------------------------------------

def test_only_refuses_everyone_else(smtp_session, relay_app):
    app = relay_app(plugins=["relay only 1", "rcpt_ok"])
    client = connect(smtp_session, app, "203.0.113.9")
    client.cmd("HELO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    # Even our own domain: this server is not an MX.
    assert client.cmd("RCPT TO:<postmaster@example.org>") == (550, ["relaying denied"])
    assert client.log_contains("fail, relay only and not a relay client")


def test_only_after_ehlo_has_enhanced_code(smtp_session, relay_app):
    client = connect(smtp_session, relay_app(plugins=["relay only 1"]), "203.0.113.9")
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<x@example.org>") == (550, ["5.7.1 relaying denied"])


def test_only_accepts_relay_clients(smtp_session, relay_app):
    # No rcpt_ok: relay only itself accepts the recipient.
    client = connect(smtp_session, relay_app(plugins=["relay only 1"]), "192.0.2.44")
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<x@elsewhere.example>").code == 250


@pytest.mark.parametrize("args", ["relay only 0", "relay"])
def test_only_off(smtp_session, relay_app, args):
    client = connect(smtp_session, relay_app(plugins=[args]), "203.0.113.9")
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    # Nobody decides: the engine's answer, not relay's.
    assert client.cmd("RCPT TO:<x@example.org>").code == 450


# -- bad input ------------------------------------------------------------------------

def test_invalid_network_lines_are_skipped(smtp_session, relay_app):
    app = relay_app(relayclients=["10.0.0.0/33", "junk/8", "192.0.2.0/24"])
    client = connect(smtp_session, app, "192.0.2.9")
    assert client.session.connection.relay_client is True
    assert client.log_contains("ignoring invalid network in relayclients: 10.0.0.0/33")
    assert client.log_contains("ignoring invalid network in relayclients: junk/8")


def test_unparsable_remote_ip(smtp_session, relay_app):
    client = connect(smtp_session, relay_app(), "not-an-ip")
    assert client.session.connection.relay_client is False
    assert client.log_contains("error, not an IP address: 'not-an-ip'")
    assert client.log_contains("skip, no match")


def test_odd_arguments_refused(make_app):
    with pytest.raises(PluginError, match="Bad arguments"):
        make_app(["relay only"])
