"""helo over real sessions and the test DNS server: every test of the three
policies, badhelo entries, the forged-literal fix, reject modes, temporary
DNS failures, timeouts, and the X-HELO header that lands."""

import pytest

from qpsmtpd.plugin import PluginError

pytest_plugins = ["dns_fixtures"]

CLIENT = "192.0.2.10"
MESSAGE = "Subject: hi\r\n\r\nhello\r\n.\r\n"


@pytest.fixture
def good_dns(dns):
    """client.example.net <-> 192.0.2.10, both ways."""
    dns.add("client.example.net", "A", CLIENT)
    dns.ptr(CLIENT, "client.example.net")
    return dns


def session(dns_session, line="helo", config=None, **kwargs):
    client = dns_session([line], config or {}, **kwargs)
    assert client.greeting.code == 220
    return client


def notes(client):
    return client.session.connection.notes


# -- lenient ----------------------------------------------------------------------

@pytest.mark.parametrize("hello, message, detail", [
    ("aol.com", "I do not believe you are aol.com.", "in badhelo"),
    ("YAHOO.com", "I do not believe you are YAHOO.com.", "in badhelo"),
    ("mail7.spammer.example", "Your HELO hostname is not allowed",
     r"badhelo pattern match (^mail\d+\.)"),
    ("localhost", "You are not localhost", "invalid localhost"),
    ("[192.0.2.99]", "Forged IPs not accepted here", "forged IP literal"),
    ("[IPv6:2001:db8::1]", "Forged IPs not accepted here", "forged IP literal"),
    ("192.0.2.10", "Plain IP is invalid HELO hostname (RFC 2821)", "plain IP"),
    ("2001:db8::1", "Plain IP is invalid HELO hostname (RFC 2821)", "plain IP"),
    ("10.255.1.2", "Plain IP is invalid HELO hostname (RFC 2821)", "plain IP"),
])
def test_lenient_refusals(dns_session, dns, hello, message, detail):
    client = session(dns_session, config={"badhelo": ["aol.com", "yahoo.com", r"^mail\d+\."]})
    assert client.cmd(f"HELO {hello}") == (550, [message])
    assert client.closed()
    assert client.log_contains(f"(helo) helo: fail, {detail}")
    assert client.log_contains("(helo) helo: karma -1 (-1)")
    assert dns.queries == []          # lenient asks no DNS


def test_ehlo_refusal(dns_session, dns):
    client = session(dns_session, config={"badhelo": "aol.com"})
    assert client.cmd("EHLO aol.com") == (550, ["I do not believe you are aol.com."])
    assert client.closed()


@pytest.mark.parametrize("hello", ["client.example.net", "[192.0.2.10]", "myhost",
                                   "not_even_a_name", "nx.example.net"])
def test_lenient_passes(dns_session, dns, hello):
    client = session(dns_session, config={"badhelo": ["aol.com", "yahoo.com"]})
    assert client.cmd(f"HELO {hello}").code == 250
    assert client.log_contains("(helo) helo: pass")


def test_negated_pattern(dns_session, dns):
    config = {"badhelo": [r"!\.example\.net$"]}
    assert session(dns_session, config=config).cmd("HELO client.example.net").code == 250
    refused = session(dns_session, config=config).cmd("HELO client.example.com")
    assert refused == (550, ["Your HELO hostname is not allowed"])


def test_bad_pattern_is_logged_and_later_entries_still_count(dns_session, dns):
    client = session(dns_session, config={"badhelo": ["(", "aol.com"]})
    assert client.cmd("HELO aol.com").code == 550
    assert client.log_contains("badhelo: bad pattern (")


def test_localhost_from_loopback_and_matching_literal_pass(dns_session, dns):
    assert session(dns_session, remote_ip="127.0.0.1").cmd("HELO localhost").code == 250
    assert session(dns_session).cmd("HELO [192.0.2.10]").code == 250
    v6 = session(dns_session, remote_ip="2001:db8::1")
    assert v6.cmd("HELO [IPv6:2001:DB8::1]").code == 250


# -- rfc ----------------------------------------------------------------------------

@pytest.mark.parametrize("hello, message", [
    ("myhost", "HELO name is not fully qualified. Read RFC 2821"),
    ("my_host.example.net", "HELO name contains invalid FQDN characters. Read RFC 1035"),
    ("nx.example.net", "HELO hostname does not exist"),
    ("mailonly.example.net", "HELO hostname did not resolve"),
])
def test_rfc_refusals_for_the_name(dns_session, good_dns, hello, message):
    good_dns.add("mailonly.example.net", "MX", (10, "client.example.net"))
    client = session(dns_session, "helo policy rfc")
    assert client.cmd(f"HELO {hello}") == (550, [message])


def test_rfc_refuses_a_client_without_ptr(dns_session, dns):
    dns.add("client.example.net", "A", CLIENT)
    client = session(dns_session, "helo policy rfc")
    assert client.cmd("HELO client.example.net") == (550, ["no rDNS for 192.0.2.10"])
    assert client.log_contains("helo: fail, no rDNS")


def test_rfc_refuses_an_address_name_without_ptr_records(dns_session, dns):
    dns.add("client.example.net", "A", CLIENT)
    dns.add("10.2.0.192.in-addr.arpa", "TXT", "no PTR here")
    client = session(dns_session, "helo policy rfc")
    assert client.cmd("HELO client.example.net") == (550, ["no reverse DNS for 192.0.2.10"])


def test_rfc_pass_and_the_x_helo_header_lands(dns_session, good_dns):
    client = session(dns_session, "helo policy rfc")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.log_contains("(helo) helo: pass")
    assert notes(client)["helo_forward_match"] == 1
    assert notes(client)["helo_reverse_match"] == 1
    assert client.cmd("MAIL FROM:<a@example.com>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("X-HELO: forged.example\r\n" + MESSAGE)
    assert client.reply().code == 250
    message = client.queued()[0]
    assert message.startswith(b"X-HELO: client.example.net\nAuthentication-Results: ")
    assert b"forged.example" not in message
    assert b"Received: from client.example.net (HELO client.example.net)" in message


def test_dns_lookups_run_together_and_are_cached(dns_session, good_dns):
    client = session(dns_session, "helo policy strict")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("EHLO client.example.net").code == 250
    asked = sorted((q.name, q.rdtype) for q in good_dns.queries)
    assert asked == [("10.2.0.192.in-addr.arpa", "PTR"), ("client.example.net", "A"),
                     ("client.example.net", "AAAA")]


# -- strict ---------------------------------------------------------------------------

def test_strict_refuses_address_literals(dns_session, good_dns):
    client = session(dns_session, "helo policy strict")
    assert client.cmd("HELO [192.0.2.10]") == (
        550, ["RFC 2821 allows an address literal, but we do not"])


def test_strict_refuses_names_that_do_not_match(dns_session, dns):
    dns.add("elsewhere.example.com", "A", "198.51.100.7")
    dns.ptr(CLIENT, "dynamic-10.isp.example")
    client = session(dns_session, "helo policy strict")
    assert client.cmd("HELO elsewhere.example.com") == (550, ["That HELO hostname fails FCrDNS"])


def test_strict_perfect_match_earns_karma(dns_session, good_dns):
    client = session(dns_session, "helo policy strict")
    assert client.cmd("HELO client.example.net").code == 250
    assert notes(client)["karma"] == 1


@pytest.mark.parametrize("address, ptr, forward, reverse", [
    ("192.0.2.200", "other.isp.example", 1, None),      # same /24
    ("198.51.100.1", "mx9.example.net", None, 1),       # same domain
])
def test_strict_loose_matches(dns_session, dns, address, ptr, forward, reverse):
    dns.add("mx1.example.net", "A", address)
    dns.ptr(CLIENT, ptr)
    client = session(dns_session, "helo policy strict")
    assert client.cmd("HELO mx1.example.net").code == 250
    assert notes(client).get("helo_forward_match") == forward
    assert notes(client).get("helo_reverse_match") == reverse
    assert "karma" not in notes(client)


def test_ipv6_client_forward_match(dns_session, dns):
    dns.add("v6.example.net", "AAAA", "2001:db8::1")
    dns.ptr("2001:db8::1", "v6.example.net")
    client = session(dns_session, "helo policy strict", remote_ip="2001:db8::1")
    assert client.cmd("EHLO v6.example.net").code == 250
    assert notes(client)["karma"] == 1


def test_a_new_hello_starts_afresh(dns_session, good_dns):
    good_dns.add("elsewhere.example.com", "A", "198.51.100.7")
    client = session(dns_session, "helo policy strict reject 0")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("HELO elsewhere.example.com").code == 250
    assert "helo_forward_match" not in notes(client)
    assert client.log_contains("fail, tolerated, no matching DNS")


# -- reject settings, immunity --------------------------------------------------------

def test_reject_0_tolerates(dns_session, dns):
    client = session(dns_session, "helo reject 0", config={"badhelo": "aol.com"})
    assert client.cmd("HELO aol.com").code == 250
    assert client.log_contains("helo: fail, tolerated, in badhelo")
    assert notes(client)["karma"] == -1


def test_reject_naughty_defers_with_disconnect(dns_session, dns):
    client = session(dns_session, "helo reject naughty", config={"badhelo": "aol.com"})
    assert client.cmd("HELO aol.com").code == 250
    assert notes(client)["naughty"] == ["(helo) I do not believe you are aol.com."]
    assert notes(client)["naughty_reject_type"] == "disconnect"


def test_reject_type_is_always_disconnect(dns_session, dns):
    client = session(dns_session, "helo reject_type temp", config={"badhelo": "aol.com"})
    assert client.cmd("HELO aol.com").code == 550
    assert client.closed()


def test_immune_clients_are_not_checked(dns_session, dns):
    client = session(dns_session, "helo policy strict", config={"badhelo": "aol.com"},
                     relay_client=True)
    assert client.cmd("HELO aol.com").code == 250
    assert client.log_contains("helo: skip, relay client")
    assert dns.queries == []


# -- temporary failures and timeouts ---------------------------------------------------

def test_forward_servfail_passes_that_test(dns_session, dns):
    dns.servfail("client.example.net")
    dns.ptr(CLIENT, "client.example.net")
    client = session(dns_session, "helo policy rfc")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.log_contains("helo: skip, query failed (SERVFAIL)")


def test_reverse_servfail_is_a_temporary_refusal(dns_session, dns):
    dns.add("client.example.net", "A", CLIENT)
    dns.servfail("10.2.0.192.in-addr.arpa")
    client = session(dns_session, "helo policy rfc")
    assert client.cmd("EHLO client.example.net") == (
        450, ["error getting reverse DNS for 192.0.2.10"])
    assert client.closed()
    assert client.log_contains("helo: fail, rDNS SERVFAIL")
    assert "karma" not in notes(client)


@pytest.mark.parametrize("line, logged", [
    ("helo policy rfc reject 0", "fail, tolerated, rDNS SERVFAIL"),
    ("helo policy rfc reject naughty", "skip, rDNS SERVFAIL (temporary, not deferred)"),
])
def test_reverse_servfail_tolerated_or_logged(dns_session, dns, line, logged):
    dns.add("client.example.net", "A", CLIENT)
    dns.servfail("10.2.0.192.in-addr.arpa")
    client = session(dns_session, line)
    assert client.cmd("HELO client.example.net").code == 250
    assert client.log_contains(logged)
    assert "naughty" not in notes(client)


def test_dead_dns_costs_one_timeout(dns_session, dns, elapsed):
    dns.drop_all()
    client = session(dns_session, "helo policy strict")
    reply, seconds = elapsed(client.cmd, "HELO client.example.net")
    assert reply == (450, ["error getting reverse DNS for 192.0.2.10"])
    assert 0.9 < seconds < 2.0
    assert client.log_contains("helo: skip, query failed (timeout)")


def test_timeout_argument(dns_session, dns, elapsed):
    dns.drop_all()
    client = session(dns_session, "helo policy rfc timeout 0.3", timeout=5)
    reply, seconds = elapsed(client.cmd, "HELO client.example.net")
    assert reply.code == 450 and seconds < 1.0


# -- configuration errors ----------------------------------------------------------------

def test_unknown_policy_stops_the_start(make_app):
    with pytest.raises(PluginError, match="unknown policy 'paranoid'"):
        make_app(["helo policy paranoid"])


def test_odd_arguments_stop_the_start(make_app):
    with pytest.raises(PluginError):
        make_app(["helo policy"])
