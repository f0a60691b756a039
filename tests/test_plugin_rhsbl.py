"""rhsbl over real sessions and the test DNS server: sender domain and HELO
name, TXT and A lists with their messages, reject settings, failures."""

import pytest


pytest_plugins = ["dns_fixtures"]

ZONES = ["rhs.example", "abuse.rhs.example does not support abuse@domain"]


def mail(dns_session, sender, helo="client.example.net", line="rhsbl", zones=ZONES,
         **kwargs):
    client = dns_session([line], {"rhsbl_zones": list(zones)}, **kwargs)
    assert client.cmd(f"EHLO {helo}").code == 250
    return client, client.cmd(f"MAIL FROM:<{sender}>")


def test_sender_domain_on_a_txt_list(dns_session, dns):
    dns.add("spam.example.rhs.example", "TXT", "is a known spam source")
    client, reply = mail(dns_session, "user@Spam.Example")
    assert reply == (550, ["5.7.1 Mail from spam.example rejected because it "
                           "is a known spam source"])
    assert client.log_contains("(mail) rhsbl: fail, rhs.example")


def test_zone_message_asks_for_an_a_record(dns_session, dns):
    dns.add("spam.example.abuse.rhs.example", "A", "127.0.0.2")
    client, reply = mail(dns_session, "user@spam.example")
    assert reply == (550, ["5.7.1 Mail from spam.example rejected because it "
                           "does not support abuse@domain"])
    assert dns.asked("spam.example.abuse.rhs.example", "A")
    assert not dns.asked("spam.example.abuse.rhs.example", "TXT")


def test_helo_name_is_checked_too(dns_session, dns):
    dns.add("bad-helo.example.rhs.example", "TXT", "is listed")
    client, reply = mail(dns_session, "user@example.com", helo="bad-helo.example")
    assert reply == (550, ["5.7.1 Mail from HELO bad-helo.example rejected because it "
                           "is listed"])


def test_sender_domain_comes_before_the_helo_name(dns_session, dns):
    dns.add("spam.example.rhs.example", "TXT", "sender listed")
    dns.add("spam-helo.example.rhs.example", "TXT", "helo listed")
    client, reply = mail(dns_session, "user@spam.example", helo="spam-helo.example")
    assert reply.lines == ["5.7.1 Mail from spam.example rejected because it sender listed"]


def test_not_listed_passes_with_all_lookups_at_once(dns_session, dns):
    client, reply = mail(dns_session, "user@example.com")
    assert reply.code == 250
    assert client.log_contains("(mail) rhsbl: pass")
    asked = sorted((q.name, q.rdtype) for q in dns.queries)
    assert asked == [("client.example.net.abuse.rhs.example", "A"),
                     ("client.example.net.rhs.example", "TXT"),
                     ("example.com.abuse.rhs.example", "A"),
                     ("example.com.rhs.example", "TXT")]


def test_same_helo_and_sender_domain_asked_once(dns_session, dns):
    mail(dns_session, "user@example.com", helo="EXAMPLE.com")
    assert len(dns.queries) == 2


@pytest.mark.parametrize("sender, helo", [("", "client.example.net"),
                                          ("user@[192.0.2.1]", "[192.0.2.10]")])
def test_null_sender_and_literals_are_skipped(dns_session, dns, sender, helo):
    client, reply = mail(dns_session, sender, helo=helo)
    assert reply.code == 250
    assert dns.queries == []


def test_a_answer_that_is_no_listing(dns_session, dns):
    dns.add("spam.example.abuse.rhs.example", "A", "127.255.255.254")
    client, reply = mail(dns_session, "user@spam.example")
    assert reply.code == 250
    assert client.log_contains("abuse.rhs.example answered 127.255.255.254: not a listing")


def test_immune_client(dns_session, dns):
    dns.add("spam.example.rhs.example", "TXT", "listed")
    client, reply = mail(dns_session, "user@spam.example", relay_client=True)
    assert reply.code == 250
    assert dns.queries == []


@pytest.mark.parametrize("line, code, closed", [
    ("rhsbl reject 0", 250, False),
    ("rhsbl reject_type temp", 450, False),
    ("rhsbl disconnect", 550, True),
])
def test_reject_settings(dns_session, dns, line, code, closed):
    dns.add("spam.example.rhs.example", "TXT", "listed")
    client, reply = mail(dns_session, "user@spam.example", line=line)
    assert reply.code == code
    if closed:
        assert client.closed()
    else:
        assert client.cmd("NOOP").code == 250


def test_reject_naughty(dns_session, dns):
    dns.add("spam.example.rhs.example", "TXT", "listed")
    client, reply = mail(dns_session, "user@spam.example", line="rhsbl reject naughty")
    assert reply.code == 250
    assert client.session.connection.notes["naughty"] == [
        "(rhsbl) Mail from spam.example rejected because it listed"]


def test_failing_lists_count_as_not_listing(dns_session, dns, elapsed):
    dns.servfail("*.rhs.example")
    dns.drop("example.com.abuse.rhs.example", "client.example.net.abuse.rhs.example")
    client = dns_session(["rhsbl"], {"rhsbl_zones": ZONES})
    assert client.cmd("EHLO client.example.net").code == 250
    reply, seconds = elapsed(client.cmd, "MAIL FROM:<user@example.com>")
    assert reply.code == 250
    assert 0.9 < seconds < 2.0                 # four lookups, one timeout
    assert client.log_contains("rhsbl: example.com.rhs.example query failed: SERVFAIL")
    assert client.log_contains(
        "rhsbl: example.com.abuse.rhs.example query failed: timeout")


def test_no_zones(dns_session, dns):
    client, reply = mail(dns_session, "user@example.com", zones=[])
    assert reply.code == 250
    assert dns.queries == []


def test_the_message_lands_after_a_pass(dns_session, dns):
    client = dns_session(["rhsbl"], {"rhsbl_zones": ZONES})
    reply = client.send_message("user@example.com", ["b@example.org"],
                                "Subject: hi\r\n\r\nhello\r\n.\r\n")
    assert reply.code == 250 and len(client.queued()) == 1
