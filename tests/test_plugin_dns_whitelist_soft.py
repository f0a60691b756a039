"""dns_whitelist_soft over real sessions and the test DNS server: the
whitelisthost note and what it exempts (dnsbl, helo), failures, timeouts."""

import pytest


pytest_plugins = ["dns_fixtures"]

CLIENT = "10.2.0.192"
PLUGINS = ["dns_whitelist_soft", "dnsbl", "helo"]
CONFIG = {"whitelist_zones": ["wl.example  # our allowlist", "other-wl.example"],
          "dnsbl_zones": ["bl.example"], "badhelo": ["aol.com"]}


@pytest.fixture(autouse=True)
def no_rblsmtpd(monkeypatch):
    monkeypatch.delenv("RBLSMTPD", raising=False)


@pytest.fixture
def blocklisted(dns):
    dns.add(f"{CLIENT}.bl.example", "TXT", "Listed in bl.example")
    return dns


def notes(client):
    return client.session.connection.notes


def test_listed_host_skips_the_later_checks(dns_session, blocklisted):
    blocklisted.add(f"{CLIENT}.wl.example", "TXT", "trusted partner")
    client = dns_session(PLUGINS, CONFIG)
    assert notes(client)["whitelisthost"] == "trusted partner"
    assert client.log_contains("dns_whitelist_soft: Host 192.0.2.10 is whitelisted: "
                               "trusted partner")
    assert client.log_contains("(connect) dnsbl: skip, whitelisted host")
    assert not blocklisted.asked(f"{CLIENT}.bl.example")
    assert client.cmd("HELO aol.com").code == 250
    reply = client.send_message("a@example.com", ["b@example.org"],
                                "Subject: hi\r\n\r\nhello\r\n.\r\n", helo=None)
    assert reply.code == 250
    assert len(client.queued()) == 1


def test_whitelisted_host_may_not_relay(dns_session, dns):
    dns.add(f"{CLIENT}.wl.example", "TXT", "trusted partner")
    client = dns_session(PLUGINS, CONFIG)
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.com>").code == 250
    assert client.cmd("RCPT TO:<someone@elsewhere.example>").code == 550


def test_not_listed_host_is_checked(dns_session, blocklisted):
    client = dns_session(PLUGINS, CONFIG)
    assert "whitelisthost" not in notes(client)
    assert client.log_contains("dns_whitelist_soft: pass, not whitelisted")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.com>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 550
    assert {q.name for q in blocklisted.queries} >= {
        f"{CLIENT}.wl.example", f"{CLIENT}.other-wl.example"}


def test_zones_in_file_order_and_empty_text(dns_session, dns):
    dns.add(f"{CLIENT}.other-wl.example", "TXT", "second")
    dns.add(f"{CLIENT}.wl.example", "TXT", "")
    client = dns_session(PLUGINS, CONFIG)
    assert notes(client)["whitelisthost"] == "listed in wl.example"


def test_ipv6_client(dns_session, dns):
    nibbles = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    dns.add(f"{nibbles}.wl.example", "TXT", "v6 partner")
    client = dns_session(PLUGINS, CONFIG, remote_ip="2001:db8::1")
    assert notes(client)["whitelisthost"] == "v6 partner"


def test_failing_zones_do_not_whitelist(dns_session, dns, elapsed):
    dns.servfail(f"{CLIENT}.wl.example").drop(f"{CLIENT}.other-wl.example")
    client, seconds = elapsed(dns_session, ["dns_whitelist_soft"], CONFIG)
    assert client.greeting.code == 220
    assert 0.9 < seconds < 2.0             # two zones, one timeout
    assert "whitelisthost" not in notes(client)
    assert client.log_contains("wl.example query failed: SERVFAIL")
    assert client.log_contains("other-wl.example query failed: timeout")


def test_no_zones_no_queries(dns_session, dns):
    client = dns_session(["dns_whitelist_soft"], {"whitelist_zones": ["", "   "]})
    assert client.greeting.code == 220
    assert dns.queries == []


def test_client_without_an_address(dns_session, dns):
    client = dns_session(["dns_whitelist_soft"], CONFIG, remote_ip="")
    assert client.log_contains("dns_whitelist_soft: skip, not an IP address: ''")
    assert dns.queries == []
