"""Weak evidence combined into a verdict: several plugins, one session.

The real plugins, nothing injected: ident/geoip reads a MaxMind DB the test
writes, fcrdns and dnsbl ask the test DNS server (tests/dns_fixtures.py),
earlytalker watches the socket, karma keeps the history in the store
(SQLite and a real redis-server), naughty carries out the deferred
rejections.

A client far away (Tokyo, > 5000 km from the site in Berlin), without
reverse DNS, listed on a DNSBL, and talking before the greeting, scores
-4: each plugin defers its refusal, and naughty refuses at MAIL with all
their messages, closing the connection. karma records the connection as
naughty and puts the IP in the penalty box, which the next connection
meets. A relay client with exactly the same evidence sends its mail.
"""

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from dns_fixtures import dns, dns_server  # noqa: F401
from qpsmtpd.store import ip_key, open_store
from store_fixtures import make_mmdb, redis_server, store_url  # noqa: F401

SPAMMER = "198.51.100.7"
RELAY = "198.51.100.8"
ZONE = "bl.example.test"
LISTED = f"Listed by {ZONE}, see https://{ZONE}/lookup"
EARLY = "Connecting host started transmitting before SMTP greeting"


@pytest.fixture
def reputation_site(dns, make_app, smtp_session, tmp_path, store_url):
    for ip in (SPAMMER, RELAY):
        reversed_ip = ".".join(reversed(ip.split(".")))
        dns.add(f"{reversed_ip}.{ZONE}", "TXT", LISTED)
        dns.add(f"{reversed_ip}.{ZONE}", "A", "127.0.0.2")
    geo = make_mmdb(tmp_path / "GeoLite2-City.mmdb", {
        "198.51.100.0/24": ("JP", "Japan", "AS", "Tokyo", 35.68, 139.69)})

    def build(karma="karma reject naughty"):
        config = {**dns.config(timeout=1), "rcpthosts": ["example.org"],
                  "relayclients": [RELAY], "dnsbl_zones": [ZONE], "store": store_url}
        plugins = ["relay", karma,
                   f"ident/geoip db_file {geo} location 52.52,13.40 too_far 5000",
                   "fcrdns", "dnsbl reject naughty reject_type disconnect",
                   "earlytalker wait 0.3 reject naughty", "naughty reject mail",
                   "rcpt_ok", f"capture {tmp_path / 'queue'}"]
        app = make_app(plugins, config, plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])

        def connect(remote_ip, early=True):
            """Connect and (``early``) talk at once: EHLO goes out before
            the greeting."""
            client = smtp_session(app=app, remote_ip=remote_ip, remote_host="Unknown",
                                  read_greeting=False)
            if early:
                client.send("EHLO client.example.net\r\n")
            client.greeting = client.reply()
            return client
        return connect
    build.queue = tmp_path / "queue"
    return build


def karma_record(url, ip):
    value = open_store(url, "karma").get(ip_key(ip))
    return None if value is None else [int(x) for x in value.split(":")]


def test_bad_evidence_adds_up_to_a_refusal_then_the_penalty_box(reputation_site, store_url):
    connect = reputation_site()
    client = connect(SPAMMER)
    assert client.greeting.code == 220          # everything is deferred
    assert client.reply().code == 250           # the early EHLO
    notes = client.session.connection.notes
    assert notes["geoip_country"] == "JP" and notes["geoip_distance"] > 5000
    assert notes["karma"] == -4                 # geoip, fcrdns, dnsbl, earlytalker
    reply = client.cmd("MAIL FROM:<offer@spam.example>")
    assert reply == (550, [f"5.7.1 (dnsbl) {LISTED}", f"5.7.1 (earlytalker) {EARLY}"])
    assert client.closed()
    client.close()                              # waits for the disconnect hooks
    for line in ("(connect) ident::geoip: AS, JP, Japan, Tokyo, ",
                 "(connect) fcrdns: fail, no rDNS: NXDOMAIN",
                 f"(connect) dnsbl: fail, NAUGHTY, {ZONE}",
                 "(connect) earlytalker: fail, NAUGHTY, remote started talking",
                 "(mail) naughty: disconnecting",
                 "(disconnect) karma: negative, sent to penalty box, (msg: -4, his: -1)"):
        assert client.log_contains(line), line
    penalty, naughty, nice, connects = karma_record(store_url, SPAMMER)
    assert (naughty, nice, connects) == (1, 0, 1) and penalty > 0

    again = connect(SPAMMER)
    assert again.greeting.code == 220
    assert again.reply().code == 250
    reply = again.cmd("MAIL FROM:<offer@spam.example>")
    assert reply.code == 550
    assert reply.lines[0] == ("5.7.1 (karma) You were naughty. You cannot connect for "
                              "1.00 more days.")
    assert again.closed()
    again.close()
    assert again.log_contains("(connect) karma: fail, NAUGHTY, 1 naughty, 0 nice, 2 connects")
    # the refused connection is counted, the penalty is not restarted
    assert karma_record(store_url, SPAMMER) == [penalty, 1, 0, 2]


def test_penalty_box_at_connect(reputation_site, store_url):
    connect = reputation_site("karma reject 1")
    client = connect(SPAMMER)
    client.reply()
    client.cmd("MAIL FROM:<offer@spam.example>")
    client.close()
    # refused before it could say anything (it would race the refusal)
    again = connect(SPAMMER, early=False)
    assert again.greeting == (550, ["You were naughty. You cannot connect for 1.00 more days."])
    assert again.closed()
    again.close()


def test_relay_client_with_the_same_evidence_passes(reputation_site, store_url):
    connect = reputation_site()
    client = connect(RELAY)
    assert client.greeting.code == 220
    assert client.reply().code == 250
    assert client.cmd("MAIL FROM:<user@example.org>").code == 250
    assert client.cmd("RCPT TO:<friend@far.example>").code == 250
    assert client.cmd("RCPT TO:<other@far.example>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: from a roaming user\r\n\r\nhello\r\n.\r\n")
    assert client.reply().code == 250
    client.cmd("QUIT")
    client.close()
    assert client.log_contains("(connect) dnsbl: skip, relay client")
    assert client.log_contains("(connect) earlytalker: skip, relay client")
    assert "naughty" not in client.session.connection.notes
    assert karma_record(store_url, RELAY) is None
    assert (reputation_site.queue / "0.eml").exists()
