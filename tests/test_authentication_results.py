"""The whole Authentication-Results header (RFC 8601) as it lands, with
fcrdns, sender_permitted_from, dkim and dmarc together, byte for byte:
every part in order, the header fields the plugins add and where, one set
of results per message, and what a failing or dead DNS server gives - each
step of the session waiting one DNS timeout at most."""

import re

import pytest

from conftest import RECEIVED

pytest_plugins = ["dns_fixtures", "mailauth_fixtures"]
pytest.register_assert_rewrite("dns_fixtures", "mailauth_fixtures")

from mailauth_fixtures import SELECTOR, sign, smtp_data  # noqa: E402

PLUGINS = ["fcrdns", "sender_permitted_from", "dkim", "dmarc"]
CLIENT = "192.0.2.10"
CONTENT = (b"From: Carol <carol@example.com>\n"
           b"To: bob@example.org\n"
           b"Subject: hello\n"
           b"Date: Sat, 21 Nov 2026 00:00:00 +0000\n"
           b"Message-ID: <m1@example.com>\n"
           b"\n"
           b"see you\n")


def zone(dns, dkim_keys, dmarc="v=DMARC1; p=reject"):
    dns.ptr(CLIENT, "client.example.net").add("client.example.net", "A", CLIENT)
    dns.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dkim_keys.publish(dns, "example.com")
    dns.add("_dmarc.example.com", "TXT", dmarc)


def send(client, content, sender="carol@example.com", helo="EHLO client.example.net"):
    client.start_data(sender, ["bob@example.org"], helo)
    client.send(smtp_data(content))
    return client.reply()


def split_trace(message):
    """``(Authentication-Results line, the rest after Received)``."""
    first, rest = message.split(b"\n", 1)
    match = re.compile(RECEIVED).match(rest)
    assert match, rest[:200]
    return first, rest[match.end():]


def test_everything_passes(dns_session, dns, dkim_keys):
    zone(dns, dkim_keys)
    client = dns_session(PLUGINS)
    signed = sign(CONTENT, dkim_keys)
    assert send(client, signed) == (250, ["2.0.0 Queued! 0"])
    first, rest = split_trace(client.queued()[0])
    assert first == (
        b"Authentication-Results: mx.example.org; auth=none; "
        b"iprev=pass policy.iprev=192.0.2.10; "
        b"spf=pass smtp.mailfrom=example.com; "
        b"dkim=pass header.i=@example.com header.s=" + SELECTOR.encode() + b"; "
        b"dmarc=pass (p=reject) header.from=example.com")
    assert rest == (
        b"X-DKIM-Authentication: domain: example.com, selector: "
        + SELECTOR.encode() + b", result: pass\n"
        b"Received-SPF: pass (mx.example.org: domain of example.com designates\n"
        b" 192.0.2.10 as permitted sender) client-ip=192.0.2.10;\n"
        b' envelope-from="carol@example.com"; helo=client.example.net;\n'
        b' receiver=mx.example.org; mechanism="ip4:192.0.2.0/24"; identity=mailfrom\n'
        + signed.replace(b"\r\n", b"\n"))


def test_everything_fails(dns_session, dns, dkim_keys):
    zone(dns, dkim_keys, dmarc="v=DMARC1; p=quarantine")
    dns.reset()
    dns.ptr(CLIENT, "client.example.net").add("client.example.net", "A", "198.51.100.1")
    dns.add("example.com", "TXT", "v=spf1 ~all")
    dkim_keys.publish(dns, "example.com")
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine")
    client = dns_session(PLUGINS)
    altered = sign(CONTENT, dkim_keys).replace(b"see you", b"click here")
    assert send(client, altered).code == 250
    first, rest = split_trace(client.queued()[0])
    assert first == (
        b"Authentication-Results: mx.example.org; auth=none; "
        b"iprev=fail policy.iprev=192.0.2.10; "
        b"spf=softfail smtp.mailfrom=example.com; "
        b"dkim=fail (body hash mismatch) header.i=@example.com header.s="
        + SELECTOR.encode() + b"; "
        b"dmarc=fail (p=quarantine) header.from=example.com")
    assert rest.startswith(b"X-DMARC-Quarantine: example.com\n"
                           b"Received-SPF: softfail (mx.example.org: domain of "
                           b"transitioning example.com\n does not designate")
    assert client.session.connection.notes["karma"] == -1 - 1 - 3    # spf, dkim, dmarc


def test_each_message_gets_its_own_results(dns_session, dns, dkim_keys):
    zone(dns, dkim_keys)
    dns.add("example.net", "TXT", "v=spf1 -all")
    client = dns_session(PLUGINS)
    assert send(client, sign(CONTENT, dkim_keys)).code == 250
    assert send(client, CONTENT, sender="x@example.net", helo=None) == (
        552, ["5.7.1 failed DMARC policy"])
    assert send(client, sign(CONTENT, dkim_keys), helo=None).code == 250
    first, second = [split_trace(m)[0] for m in client.queued()]
    assert first == second
    for method in (b" iprev=", b" spf=", b" dkim=", b" dmarc="):
        assert first.count(method) == 1


def test_a_forged_incoming_header_is_renamed(dns_session, dns, dkim_keys):
    zone(dns, dkim_keys)
    client = dns_session(PLUGINS)
    forged = b"Authentication-Results: mx.example.org; dmarc=pass\n" + CONTENT
    assert send(client, forged, sender="x@example.net").code == 552   # really fails
    assert send(client, sign(forged, dkim_keys), helo=None).code == 250
    message = client.queued()[0]
    assert message.count(b"Authentication-Results:") == 2   # ours + Original-
    assert message.startswith(b"Authentication-Results: mx.example.org; auth=none; "
                              b"iprev=pass ")
    assert b"\nOriginal-Authentication-Results: mx.example.org; dmarc=pass\n" in message


def test_me_auth_results_names_the_server(dns_session, dns, dkim_keys):
    zone(dns, dkim_keys)
    client = dns_session(PLUGINS, config={"me-auth-results": "auth.example.org"})
    assert send(client, sign(CONTENT, dkim_keys)).code == 250
    assert client.queued()[0].startswith(
        b"Authentication-Results: auth.example.org; auth=none; iprev=pass ")


def test_servfail_everywhere_gives_temperror_and_the_mail(dns_session, dns, dkim_keys):
    dns.servfail("*.arpa", "example.com", f"{SELECTOR}._domainkey.example.com",
                 "_dmarc.example.com")
    client = dns_session(PLUGINS)
    assert send(client, sign(CONTENT, dkim_keys)).code == 250
    first, _rest = split_trace(client.queued()[0])
    assert first == (
        b"Authentication-Results: mx.example.org; auth=none; "
        b"iprev=temperror policy.iprev=192.0.2.10; "
        b"spf=temperror smtp.mailfrom=example.com; "
        b"dkim=temperror (key lookup failed: SERVFAIL) header.i=@example.com header.s="
        + SELECTOR.encode() + b"; "
        b"dmarc=temperror header.from=example.com")


def test_dead_server_every_step_waits_one_timeout_at_most(dns_session, dns, dkim_keys,
                                                          elapsed):
    dns.drop_all()
    client, seconds = elapsed(dns_session, PLUGINS, timeout=1)
    assert client.greeting.code == 220
    assert 0.9 < seconds < 1.5                           # fcrdns at connect
    assert client.cmd("EHLO client.example.net").code == 250
    reply, seconds = elapsed(client.cmd, "MAIL FROM:<carol@example.com>")
    assert reply.code == 250 and 0.9 < seconds < 1.5     # SPF
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    reply, seconds = elapsed(lambda: (client.send(smtp_data(sign(CONTENT, dkim_keys))),
                                      client.reply())[1])
    assert reply.code == 250
    assert 0.9 < seconds < 1.5                           # dkim and dmarc together
    first, _rest = split_trace(client.queued()[0])
    assert first == (
        b"Authentication-Results: mx.example.org; auth=none; "
        b"iprev=temperror policy.iprev=192.0.2.10; "
        b"spf=temperror smtp.mailfrom=example.com; "
        b"dkim=temperror (key lookup failed: timeout) header.i=@example.com header.s="
        + SELECTOR.encode() + b"; "
        b"dmarc=temperror header.from=example.com")
