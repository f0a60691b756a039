"""resolvable_fromhost over real sessions and the test DNS server: MX and
address checks, invalid networks, notes and karma, reject settings,
temporary failures and what a dead server costs."""

import pytest


pytest_plugins = ["dns_fixtures"]

FQDN_SOFT = "4.1.8 FQDN required in the envelope sender (#4.1.8)"
FQDN_HARD = "5.1.8 FQDN required in the envelope sender (#5.1.8)"
TEMPORARY = "4.4.3 Temporary address resolution failure (#4.4.3)"


def mail(dns_session, sender, line="resolvable_fromhost", config=None, **kwargs):
    client = dns_session([line], config, **kwargs)
    assert client.cmd("EHLO client.example.net").code == 250
    return client, client.cmd(f"MAIL FROM:<{sender}>")


def tnotes(client):
    return client.session.transaction.notes


def karma(client):
    return client.session.connection.notes.get("karma")


# -- passes ---------------------------------------------------------------------

@pytest.mark.parametrize("exchanges, records", [
    ([(10, "mx.example.com")], {"mx.example.com": ("A", "192.0.2.25")}),
    ([(10, "mx.example.com")], {"mx.example.com": ("AAAA", "2001:db8::25")}),
    ([(10, "bad.example.com"), (20, "mx.example.com")],
     {"bad.example.com": ("A", "10.0.0.1"), "mx.example.com": ("A", "192.0.2.25")}),
    ([(10, "192.0.2.25")], {}),
])
def test_domain_with_a_valid_mx(dns_session, dns, exchanges, records):
    dns.add("example.com", "MX", *exchanges)
    for name, (rdtype, address) in records.items():
        dns.add(name, rdtype, address)
    client, reply = mail(dns_session, "user@Example.COM")
    assert reply.code == 250
    assert tnotes(client)["resolvable_fromhost"] == "mx"
    assert tnotes(client)["resolvable_fromhost_host"] == "Example.COM"
    assert client.log_contains("resolvable_fromhost: pass, example.com has MX at")
    assert karma(client) is None


@pytest.mark.parametrize("rdtype, address", [("A", "192.0.2.1"), ("AAAA", "2001:db8::1")])
def test_domain_without_mx_but_with_an_address(dns_session, dns, rdtype, address):
    dns.add("example.com", rdtype, address)
    client, reply = mail(dns_session, "user@example.com")
    assert reply.code == 250
    assert tnotes(client)["resolvable_fromhost"] == "a"
    assert client.log_contains("resolvable_fromhost: example.com has no MX")
    assert client.log_contains("resolvable_fromhost: pass, found A for example.com")
    assert karma(client) == -1


def test_null_sender(dns_session, dns):
    client, reply = mail(dns_session, "")
    assert reply.code == 250
    assert tnotes(client)["resolvable_fromhost"] == "null"
    assert dns.queries == []


def test_address_literal_sender(dns_session, dns):
    client, reply = mail(dns_session, "user@[192.0.2.1]")
    assert reply.code == 250
    assert tnotes(client)["resolvable_fromhost"] == "ip"
    assert client.log_contains("resolvable_fromhost: skip, [192.0.2.1] is an IP")
    assert karma(client) == -1
    assert dns.queries == []


def test_immune_client(dns_session, dns):
    client, reply = mail(dns_session, "user@nx.example", relay_client=True)
    assert reply.code == 250
    assert dns.queries == []


# -- refusals ---------------------------------------------------------------------

@pytest.mark.parametrize("setup, reason, score", [
    (lambda dns: None, "example.com does not exist", -2),
    (lambda dns: dns.add("example.com", "TXT", "v=spf1 -all"),
     "no MX or address for example.com", -2),
    (lambda dns: dns.add("example.com", "A", "127.0.0.1"),
     "no valid address for example.com", -2),
    (lambda dns: (dns.add("example.com", "MX", (10, "mx.example.com")),
                  dns.add("mx.example.com", "A", "192.168.1.1")),
     "invalid MX for example.com", -2),
    (lambda dns: dns.add("example.com", "MX", (10, "gone.example.com")),
     "invalid MX for example.com", -2),
    (lambda dns: dns.add("example.com", "MX", (0, ".")),
     "invalid MX for example.com", -2),
])
def test_unresolvable_sender_domains(dns_session, dns, setup, reason, score):
    setup(dns)
    client, reply = mail(dns_session, "user@example.com")
    assert reply == (450, [FQDN_SOFT])
    assert tnotes(client)["resolvable_fromhost"] == reason
    assert client.log_contains(f"resolvable_fromhost: fail, {reason}")
    assert karma(client) == score


def test_nonexistent_domain_is_asked_once_for_everything(dns_session, dns):
    client, reply = mail(dns_session, "user@nx.example")
    assert reply.code == 450
    assert sorted(q.rdtype for q in dns.queries) == ["A", "AAAA", "MX"]


def test_reject_type_perm(dns_session, dns):
    client, reply = mail(dns_session, "user@nx.example",
                         "resolvable_fromhost reject_type perm")
    assert reply == (550, [FQDN_HARD])


def test_helo_session_gets_the_plain_text(dns_session, dns):
    client = dns_session(["resolvable_fromhost"])
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<user@nx.example>") == (
        450, ["FQDN required in the envelope sender (#4.1.8)"])


def test_reject_0_tolerates(dns_session, dns):
    client, reply = mail(dns_session, "user@nx.example", "resolvable_fromhost reject 0")
    assert reply.code == 250
    assert client.log_contains("fail, tolerated, nx.example does not exist")


def test_reject_naughty_defers(dns_session, dns):
    client, reply = mail(dns_session, "user@nx.example", "resolvable_fromhost reject naughty")
    assert reply.code == 250
    notes = client.session.connection.notes
    assert notes["naughty"] == [
        "(resolvable_fromhost) FQDN required in the envelope sender (#4.1.8)"]
    assert notes["naughty_reject_type"] == "soft"


def test_invalid_networks_from_the_config_file(dns_session, dns):
    dns.add("example.com", "MX", (10, "mx.example.com"))
    dns.add("mx.example.com", "A", "192.0.2.25")
    config = {"invalid_resolvable_fromhost": ["192.0.2.0/24", "garbage", "2001:db8::/32"]}
    client, reply = mail(dns_session, "user@example.com", config=config)
    assert reply.code == 450
    assert client.log_contains("ignoring invalid entry in invalid_resolvable_fromhost: garbage")
    client, reply = mail(dns_session, "user@example.com",
                         config={"invalid_resolvable_fromhost": "198.51.100.0/24"})
    assert reply.code == 250     # the file replaces the built-in list


# -- temporary failures ------------------------------------------------------------------

@pytest.mark.parametrize("line", ["resolvable_fromhost",
                                  "resolvable_fromhost reject_type perm"])
def test_servfail_is_always_temporary(dns_session, dns, line):
    dns.servfail("example.com")
    client, reply = mail(dns_session, "user@example.com", line)
    assert reply == (450, [TEMPORARY])
    assert tnotes(client)["resolvable_fromhost"] == "example.com MX: SERVFAIL"
    assert karma(client) is None


def test_servfail_of_the_mx_hosts_is_temporary(dns_session, dns):
    dns.add("example.com", "MX", (10, "mx.example.com")).servfail("mx.example.com")
    client, reply = mail(dns_session, "user@example.com")
    assert reply == (450, [TEMPORARY])


@pytest.mark.parametrize("line, logged", [
    ("resolvable_fromhost reject 0", "fail, tolerated, example.com MX: SERVFAIL"),
    ("resolvable_fromhost reject naughty",
     "skip, example.com MX: SERVFAIL (temporary, not deferred)"),
])
def test_servfail_tolerated(dns_session, dns, line, logged):
    dns.servfail("example.com")
    client, reply = mail(dns_session, "user@example.com", line)
    assert reply.code == 250
    assert client.log_contains(logged)


def test_dead_server_costs_one_timeout(dns_session, dns, elapsed):
    dns.drop_all()
    client = dns_session(["resolvable_fromhost"])
    assert client.cmd("EHLO client.example.net").code == 250
    reply, seconds = elapsed(client.cmd, "MAIL FROM:<user@example.com>")
    assert reply == (450, [TEMPORARY])
    assert 0.9 < seconds < 2.0


def test_the_message_lands_after_a_pass(dns_session, dns):
    dns.add("example.com", "A", "192.0.2.1")
    client = dns_session(["resolvable_fromhost"])
    reply = client.send_message("user@example.com", ["b@example.org"],
                                "Subject: hi\r\n\r\nhello\r\n.\r\n")
    assert reply.code == 250
    assert client.queued()[0].endswith(b"Subject: hi\n\nhello\n")
