"""fcrdns over real sessions and the test DNS server: each outcome's
karma, log line and the iprev part of the Authentication-Results header
that lands; timeouts and SERVFAIL; never a refusal."""

import pytest


pytest_plugins = ["dns_fixtures"]

CLIENT = "192.0.2.10"
PTR = "10.2.0.192.in-addr.arpa"
MESSAGE = "Subject: hi\r\n\r\nhello\r\n.\r\n"


def deliver(client):
    """One message through the session; the bytes that landed."""
    reply = client.send_message("a@example.com", ["b@example.org"], MESSAGE)
    assert reply.code == 250
    return client.queued()[-1]


def auth_results(message):
    line = next(line for line in message.split(b"\n")
                if line.startswith(b"Authentication-Results:"))
    return line.decode()


def karma(client):
    return client.session.connection.notes.get("karma")


@pytest.mark.parametrize("setup, iprev, score, logged", [
    (lambda dns: (dns.ptr(CLIENT, "client.example.net"),
                  dns.add("client.example.net", "A", CLIENT)),
     "pass", 1, "fcrdns: pass"),
    (lambda dns: (dns.ptr(CLIENT, "Client.Example.NET."),
                  dns.add("client.example.net", "AAAA", "2001:db8::1"),
                  dns.add("client.example.net", "A", CLIENT)),
     "pass", 1, "fcrdns: pass"),
    (lambda dns: (dns.ptr(CLIENT, "pool-9.example.net"),
                  dns.add("pool-9.example.net", "A", "192.0.2.9")),
     "pass", None, "fcrdns: pass, forward network match"),
    (lambda dns: (dns.ptr(CLIENT, "liar.example.net"),
                  dns.add("liar.example.net", "A", "198.51.100.1")),
     "fail", None, "fcrdns: fail, no PTR name resolves to 192.0.2.10"),
    (lambda dns: dns.ptr(CLIENT, "gone.example.net"),
     "fail", -1, "fcrdns: fail, no PTR hosts have forward DNS"),
    (lambda dns: None,
     "permerror", -1, "fcrdns: fail, no rDNS: NXDOMAIN"),
    (lambda dns: dns.add(PTR, "TXT", "no PTR"),
     "permerror", -1, "fcrdns: fail, no PTR records"),
    (lambda dns: dns.ptr(CLIENT, "localhost"),
     "fail", -1, "fcrdns: fail, not FQDN"),
    (lambda dns: dns.ptr(CLIENT, "bad_name.example.net"),
     "fail", -1, "fcrdns: fail, invalid FQDN chars"),
    (lambda dns: dns.servfail(PTR),
     "temperror", None, "fcrdns: fail, error getting rDNS: SERVFAIL"),
    (lambda dns: (dns.ptr(CLIENT, "client.example.net"),
                  dns.servfail("client.example.net")),
     "temperror", None, "fcrdns: fail, error getting forward DNS: SERVFAIL"),
])
def test_outcomes(dns_session, dns, setup, iprev, score, logged):
    setup(dns)
    client = dns_session(["fcrdns"])
    assert client.greeting.code == 220          # never refuses
    assert client.log_contains(logged)
    assert karma(client) == score
    message = deliver(client)
    assert auth_results(message) == (
        f"Authentication-Results: mx.example.org; auth=none; "
        f"iprev={iprev} policy.iprev={CLIENT}")


def test_one_result_for_every_message_of_the_connection(dns_session, dns):
    dns.ptr(CLIENT, "client.example.net").add("client.example.net", "A", CLIENT)
    client = dns_session(["fcrdns"])
    deliver(client)
    second = client.send_message("a@example.com", ["b@example.org"], MESSAGE, helo=None)
    assert second.code == 250
    for message in client.queued():
        assert auth_results(message).endswith("; iprev=pass policy.iprev=192.0.2.10")
        assert message.count(b" iprev=") == 1


def test_ipv6_client(dns_session, dns):
    dns.ptr("2001:db8::10", "v6.example.net").add("v6.example.net", "AAAA", "2001:db8::10")
    client = dns_session(["fcrdns"], remote_ip="2001:db8::10")
    assert client.log_contains("fcrdns: pass")
    assert client.session.connection.auth_results == [
        "iprev=pass policy.iprev=2001:db8::10"]


def test_several_names_one_lookup_each_at_once(dns_session, dns, elapsed):
    dns.ptr(CLIENT, "a.example.net", "b.example.net", "c.example.net")
    dns.add("c.example.net", "A", CLIENT)
    dns.delay("a.example.net", 1.2).delay("b.example.net", 1.2)
    client, seconds = elapsed(dns_session, ["fcrdns"], timeout=3)
    assert client.log_contains("fcrdns: pass")
    assert 1.1 < seconds < 2.3          # one after the other would be 2.4 at least


def test_localhost(dns_session, dns):
    client = dns_session(["fcrdns"], remote_ip="127.0.0.1", remote_host="localhost")
    assert client.log_contains("fcrdns: pass, is localhost")
    assert karma(client) == 1
    assert dns.queries == []
    assert client.session.connection.auth_results == []


def test_claims_localhost_from_elsewhere(dns_session, dns):
    client = dns_session(["fcrdns"], remote_host="localhost")
    assert client.log_contains("fcrdns: fail, not localhost")
    assert karma(client) == -1
    assert dns.queries == []


def test_immune_client_is_skipped(dns_session, dns):
    client = dns_session(["fcrdns"], relay_client=True)
    assert client.log_contains("fcrdns: skip, relay client")
    assert dns.queries == []


def test_dead_server_costs_one_timeout_and_gives_temperror(dns_session, dns, elapsed):
    dns.drop_all()
    client, seconds = elapsed(dns_session, ["fcrdns"])
    assert client.greeting.code == 220
    assert 0.9 < seconds < 2.0
    assert client.log_contains("fcrdns: fail, error getting rDNS: timeout")
    assert client.session.connection.auth_results == ["iprev=temperror policy.iprev=192.0.2.10"]


def test_timeout_argument(dns_session, dns, elapsed):
    dns.drop_all()
    client, seconds = elapsed(dns_session, ["fcrdns timeout 0.3"], timeout=5)
    assert seconds < 1.0


def test_reject_arguments_are_accepted_and_ignored(dns_session, dns):
    client = dns_session(["fcrdns reject 1 reject_type perm"])
    assert client.greeting.code == 220
    assert client.log_contains("fcrdns: fail, no rDNS: NXDOMAIN")


def test_ptr_from_the_daemon_is_reused(dns_session, dns):
    """A PTR the daemon looked up (qpsmtpd.dns.reverse_name with the
    connection's cache) is not asked again."""
    from qpsmtpd.connection import Connection
    from qpsmtpd.dns import Resolver, connection_cache, reverse_name
    dns.ptr(CLIENT, "client.example.net").add("client.example.net", "A", CLIENT)
    connection = Connection(remote_ip=CLIENT)
    cache = connection_cache(connection)
    assert reverse_name(CLIENT, Resolver([("127.0.0.1", dns.port)], 1), cache)
    client = dns_session(["fcrdns"], notes=connection.notes)
    assert client.log_contains("fcrdns: pass")
    assert [q.rdtype for q in dns.queries].count("PTR") == 1
