"""Relay safety: no address form lets a client that may not relay send mail
to a domain that is not ours.

The plugin chain is the sample configuration's (``relay``,
``dont_require_anglebrackets``, ``badmailfrom``, ``badrcptto``,
``rcpt_ok``) with the test plugin ``capture`` as the queue. Our domains are
``rcpthosts``: ``example.org``, every name under ``.example.org`` and
``parkway.example``, plus ``config/me`` (``mx.example.org``). The client
``192.0.2.10`` is in ``relayclients``; ``198.51.100.7`` is not.

Each row of ``RELAY_TABLE`` is a classic open-relay probe: the text after
``RCPT TO:`` and what must happen to it. For the client that may not
relay, every probe is either refused (550 relaying denied, or a 5xx
syntax error), or accepted only as mail for one of our own domains: the
recipient the queue receives is exactly the one written in the table, and
the host after its last ``@`` is ours. The policy for local parts that
look like routing (``user%victim.example@example.org``,
``victim.example!user@example.org``, ``"user@victim.example"@example.org``):
they are mail for our domain, handed to our queue unchanged; whether the
system behind the queue treats ``%`` or ``!`` as routing is its
configuration (docs/SECURITY.md says so). The relay client gets every
parsable recipient, unchanged.
"""

import re

import pytest

from hardening_fixtures import Session, build_app, queued_files, queued_number, tracebacks
from qpsmtpd.address import Address

OUR_DOMAINS = ("example.org", "mx.example.org", "parkway.example")
OUR_SUFFIXES = (".example.org",)
RELAY_IP = "192.0.2.10"
STRANGER_IP = "198.51.100.7"
SENDER = "<sender@example.net>"

REFUSED = "refused"   # 550 for the stranger, accepted for the relay client
LOCAL = "local"       # accepted for both, and it is ours


def row(probe, kind, landed=None, id=None):
    """``kind`` is LOCAL, REFUSED, or a number: that reply for both clients
    (a syntax error). ``landed`` is the recipient the queue must receive
    when the probe is accepted (default: ``probe`` itself)."""
    return pytest.param(probe, kind, landed or probe, id=id or probe)


RELAY_TABLE = [
    # -- plain addresses ---------------------------------------------------
    row("<user@victim.example>", REFUSED),
    row("<user@example.org>", LOCAL),
    row("<user@mx.example.org>", LOCAL),
    row("<user@sub.example.org>", LOCAL),
    row("<user@victim.example.example.org>", LOCAL, id="victim-as-our-subdomain"),
    row("<user@example.org.victim.example>", REFUSED),
    row("<user@victimexample.org>", REFUSED),
    row("<user@localhost>", REFUSED),
    row("<user@mx>", REFUSED),
    row("<user>", 501),
    # -- the percent hack --------------------------------------------------
    row("<user%victim.example@example.org>", LOCAL),
    row("<user%victim.example%example.org@example.org>", LOCAL),
    row("<user%victim.example@mx.example.org>", LOCAL),
    row("<user%victim.example>", 501),
    row("<user@victim.example%example.org>", REFUSED),
    row("<user@victim.example%x.example.org>", REFUSED, id="percent-in-our-suffix"),
    # -- bang paths --------------------------------------------------------
    row("<victim.example!user@example.org>", LOCAL),
    row("<example.org!victim.example!user@example.org>", LOCAL),
    row("<victim.example!user>", 501),
    row("<user@example.org!victim.example>", REFUSED),
    row("<user@victim.example!x.example.org>", REFUSED, id="bang-in-our-suffix"),
    # -- source routes (RFC 5321 C: dropped, the mailbox counts) -------------
    row("<@example.org:user@victim.example>", REFUSED, "<user@victim.example>"),
    row("<@example.org,@mx.example.org:user@victim.example>", REFUSED,
        "<user@victim.example>"),
    row("<@[192.0.2.1]:user@victim.example>", REFUSED, "<user@victim.example>"),
    row("<@victim.example:user@example.org>", LOCAL, "<user@example.org>"),
    row("<@example.org:user%victim.example@example.org>", LOCAL,
        "<user%victim.example@example.org>"),
    row("<@example.org:@victim.example:user@victim.example>", 501),
    row("<@victim.example@example.org>", 501),
    row("<user@victim.example:x.example.org>", REFUSED, id="colon-in-our-suffix"),
    # -- quoted local parts --------------------------------------------------
    row('<"user@victim.example"@example.org>', LOCAL,
        r'<"user\@victim.example"@example.org>'),
    row(r'<"user\@victim.example"@example.org>', LOCAL,
        r'<"user\@victim.example"@example.org>'),
    row('<"user%victim.example"@example.org>', LOCAL, "<user%victim.example@example.org>"),
    row('<"victim.example!user"@example.org>', LOCAL, "<victim.example!user@example.org>"),
    row('<"user@example.org"@victim.example>', REFUSED, r'<"user\@example.org"@victim.example>'),
    row('<"user"@victim.example>', REFUSED, "<user@victim.example>"),
    row('<"user@victim.example">', 501),
    row('<"user@victim.example>', 501),
    row('<"user@example.org">', 501),
    # -- more than one @ -------------------------------------------------------
    row("<user@victim.example@example.org>", LOCAL, r'<"user\@victim.example"@example.org>'),
    row("<user@example.org@victim.example>", REFUSED, r'<"user\@example.org"@victim.example>'),
    row("<user@@example.org>", LOCAL, r'<"user\@"@example.org>'),
    row("<user@[192.0.2.1]@example.org>", LOCAL, r'<"user\@\[192.0.2.1\]"@example.org>'),
    # -- trailing and leading dots -------------------------------------------
    row("<user@example.org.>", 501),
    row("<user@victim.example.>", 501),
    row("<user@.example.org>", 501),
    row("<user.@example.org>", LOCAL),
    # -- address literals (ours only when listed in rcpthosts) ---------------
    row("<user@[192.0.2.1]>", REFUSED, id="our-own-ip-literal"),
    row("<user@[127.0.0.1]>", REFUSED),
    row("<user@[198.51.100.99]>", REFUSED),
    row("<user@[IPv6:2001:db8::1]>", REFUSED),
    row("<user@[300.1.1.1]>", REFUSED),
    row("<user@192.0.2.1>", REFUSED),
    row("<user%victim.example@[192.0.2.1]>", REFUSED),
    row("<postmaster@[192.0.2.1]>", REFUSED),
    # -- case ----------------------------------------------------------------
    row("<USER@EXAMPLE.ORG>", LOCAL),
    row("<user@SUB.Example.ORG>", LOCAL),
    row("<user@Victim.Example>", REFUSED),
    row("<User%Victim.Example@Example.Org>", LOCAL),
    # -- Unicode lookalikes and IDN -------------------------------------------
    row("<user@ex\u0430mple.org>", REFUSED, id="cyrillic-a-in-domain"),
    row("<user@example.\u043erg>", 501, id="cyrillic-o-in-domain"),
    row("<user@xn--exmple-cua.org>", REFUSED, id="punycode-lookalike"),
    row("<user@\uff45xample.org>", 501, id="fullwidth-e-in-domain"),
    row("<user@par\u212away.example>", REFUSED, id="kelvin-sign-lowercases-to-k"),
    row("<user@example\u3002org>", REFUSED, id="ideographic-full-stop"),
    row("<user@victim.example\u3002x.example.org>", REFUSED,
        id="ideographic-full-stop-in-our-suffix"),
    row("<user@example.org\u200b>", 501, id="zero-width-space-after-domain"),
    row("<us\u00e9r%victim.example@example.org>", LOCAL,
        '<"us\\\u00e9r%victim.example"@example.org>', id="non-ascii-local-part"),
    row("<user@victim_example.example.org>", REFUSED, id="underscore-in-our-suffix"),
    # -- spaces ---------------------------------------------------------------
    row("<user@victim.example>   ", REFUSED, "<user@victim.example>",
        id="trailing-spaces"),
    row("<user@example.org>\t", LOCAL, "<user@example.org>", id="trailing-tab"),
    row("  <user@victim.example>", REFUSED, "<user@victim.example>", id="leading-spaces"),
    row("<user@victim.example >", 501),
    row("<user@example.org >", 501),
    row("<user @example.org>", LOCAL, r'<"user\ "@example.org>'),
    row("<user@victim.example> <user@example.org>", 501, id="two-paths"),
    row("<user@victim.example> X-RELAY", 555, id="unknown-parameter"),
    # -- angle brackets -------------------------------------------------------
    row("<>", 501),
    row("<<user@victim.example>>", 501),
    row("<user@example.org><user@victim.example>", REFUSED,
        r'<"user\@example.org\>\<user"@victim.example>'),
    row("<user@victim.example><user@example.org>", LOCAL,
        r'<"user\@victim.example\>\<user"@example.org>'),
    row("<user@victim.example>x.example.org>", REFUSED, id="angle-in-our-suffix"),
    row("<user@victim.example,x.example.org>", REFUSED, id="comma-in-our-suffix"),
    row("user@victim.example", REFUSED, "<user@victim.example>", id="no-brackets"),
    row("user%victim.example@example.org", LOCAL, "<user%victim.example@example.org>",
        id="no-brackets-percent"),
    row("<user@victim.example", 501),
    row("user@victim.example>", 501),
    # -- postmaster -------------------------------------------------------------
    row("<postmaster>", LOCAL),
    row("<PostMaster>", LOCAL, "<postmaster>"),
    row("<postmaster@example.org>", LOCAL),
    row("<postmaster@victim.example>", REFUSED),
    row("<PostMaster@Victim.Example>", REFUSED),
    row('<"postmaster"@victim.example>', REFUSED, "<postmaster@victim.example>"),
    row("<postmaster%victim.example@example.org>", LOCAL),
    row("<@victim.example:postmaster>", LOCAL, "<postmaster>"),
    row('<"postmaster@victim.example">', 501),
    row("<abuse>", 501),
    row("<postmaster@victim.example@example.org>", LOCAL,
        r'<"postmaster\@victim.example"@example.org>'),
]


def is_ours(formatted):
    """True when the recipient ``formatted`` (``<...>`` as the queue got it)
    is mail for one of our domains, judged the simplest way a program
    behind us could: the text after the last ``@``, in ASCII, compared
    without case; ``.example.org`` only for plain dotted host names. A bare
    postmaster is mail for ``config/me``."""
    text = formatted[1:-1]
    if text == "postmaster":
        return True
    if "@" not in text:
        return False
    host = text.rsplit("@", 1)[1]
    if not host.isascii():
        return False
    host = host.lower()
    if host in OUR_DOMAINS:
        return True
    dotted = re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
                          r"(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*", host)
    return bool(dotted) and host.endswith(OUR_SUFFIXES)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("relay_safety")
    queue = root / "queue"
    plugins = ["relay", "dont_require_anglebrackets", "badmailfrom", "badrcptto",
               "rcpt_ok", f"capture {queue}"]
    files = {"rcpthosts": ["example.org", ".example.org", "parkway.example"],
             "relayclients": [RELAY_IP], "badmailfrom": ["@spam.example"],
             "badrcptto": ["nobody@example.org"],
             # the pipelined test sends the whole table in one session
             "max_errors": "0"}
    app = build_app(root / "config", plugins, files)
    app.queue_dir = queue
    return app


@pytest.fixture(autouse=True)
def no_relayclient_env(monkeypatch):
    monkeypatch.delenv("RELAYCLIENT", raising=False)


def send_rcpt(site, client_ip, probe):
    """A session from ``client_ip``: EHLO, MAIL, ``RCPT TO:<probe>``; when
    that is accepted, DATA and a message. Returns the RCPT reply and the
    envelope the queue received (None when nothing was queued)."""
    session = Session(site, remote_ip=client_ip)
    try:
        assert session.greeting.code == 220
        assert session.cmd("EHLO client.example.net").code == 250
        assert session.cmd(f"MAIL FROM:{SENDER}").code == 250
        reply = session.cmd("RCPT TO:" + probe)
        envelope = None
        if reply.code == 250:
            assert session.cmd("DATA").code == 354
            session.send("Subject: relay probe\r\n\r\nprobe\r\n.\r\n")
            queued = session.reply()
            assert queued.code == 250, queued
            _, envelope = queued_files(site.queue_dir, queued_number(queued))
        assert session.cmd("QUIT").code == 221
    finally:
        log = session.finish()
    assert session.error is None, session.error
    assert tracebacks(log) == []
    return reply, envelope


@pytest.mark.parametrize("probe, kind, landed", RELAY_TABLE)
def test_stranger_cannot_relay(site, probe, kind, landed):
    reply, envelope = send_rcpt(site, STRANGER_IP, probe)
    if kind == LOCAL:
        assert reply.code == 250, reply
        assert envelope == [SENDER, landed]
        assert is_ours(landed), "the table says LOCAL for a foreign recipient"
    elif kind == REFUSED:
        assert reply == (550, ["5.7.1 Relaying denied (#5.7.1)"])
        assert envelope is None
    else:
        assert reply.code == kind, reply
        assert envelope is None


@pytest.mark.parametrize("probe, kind, landed", RELAY_TABLE)
def test_relay_client_may_send_anywhere(site, probe, kind, landed):
    reply, envelope = send_rcpt(site, RELAY_IP, probe)
    if kind in (LOCAL, REFUSED):
        assert reply.code == 250, reply
        assert envelope == [SENDER, landed]
    else:
        assert reply.code == kind, reply
        assert envelope is None


def test_a_domain_that_is_not_ascii_is_logged(site):
    session = Session(site, remote_ip=STRANGER_IP)
    try:
        session.cmd("EHLO client.example.net")
        session.cmd(f"MAIL FROM:{SENDER}")
        assert session.cmd("RCPT TO:<user@par\u212away.example>").code == 550
    finally:
        log = session.finish()
    assert any("rcpt_ok: fail, no ASCII domain in <user@par\u212away.example>" in line
               for line in log)


def test_every_accepted_table_row_lands_as_parsed():
    """The table's ``landed`` column agrees with the address parser, so a
    wrong row shows up here by its id before it confuses the session tests."""
    for param in RELAY_TABLE:
        probe, kind, landed = param.values
        if kind not in (LOCAL, REFUSED):
            continue
        path = probe.strip()
        if not path.startswith("<"):
            path = f"<{path}>"
        assert Address.parse(path).format() == landed, param.id


@pytest.mark.parametrize("sender", [
    "<>", "<postmaster@example.org>", "<user@example.org>", "<user@mx.example.org>",
    "<user@victim.example>", "<postmaster>",
])
def test_the_sender_does_not_open_the_relay(site, sender):
    session = Session(site, remote_ip=STRANGER_IP)
    try:
        assert session.cmd("EHLO client.example.net").code == 250
        assert session.cmd(f"MAIL FROM:{sender}").code == 250
        assert session.cmd("RCPT TO:<user@victim.example>").code == 550
    finally:
        session.finish()


def test_helo_localhost_or_our_name_does_not_open_the_relay(site):
    for hello in ("HELO localhost", "EHLO mx.example.org", "EHLO [192.0.2.1]",
                  "EHLO example.org"):
        session = Session(site, remote_ip=STRANGER_IP)
        try:
            assert session.cmd(hello).code == 250
            assert session.cmd(f"MAIL FROM:{SENDER}").code == 250
            assert session.cmd("RCPT TO:<user@victim.example>").code == 550, hello
        finally:
            session.finish()


def test_pipelined_mix_queues_only_our_recipients(site):
    """One transaction, many probes pipelined: the queue gets exactly the
    accepted ones, and each of them is ours."""
    probes = [p.values[0] for p in RELAY_TABLE]
    session = Session(site, remote_ip=STRANGER_IP)
    try:
        assert session.cmd("EHLO client.example.net").code == 250
        assert session.cmd(f"MAIL FROM:{SENDER}").code == 250
        session.send("".join(f"RCPT TO:{probe}\r\n" for probe in probes))
        replies = [session.reply() for _ in probes]
        accepted = [p.values[2] for p, r in zip(RELAY_TABLE, replies) if r.code == 250]
        assert accepted == [p.values[2] for p in RELAY_TABLE if p.values[1] == LOCAL]
        assert session.cmd("DATA").code == 354
        session.send("Subject: mix\r\n\r\nx\r\n.\r\n")
        queued = session.reply()
        _, envelope = queued_files(site.queue_dir, queued_number(queued))
        assert envelope == [SENDER] + accepted
        assert all(is_ours(recipient) for recipient in envelope[1:])
    finally:
        session.finish()


def test_relay_client_status_does_not_leak_to_the_next_session(site):
    first = Session(site, remote_ip=RELAY_IP)
    try:
        assert first.cmd("EHLO client.example.net").code == 250
        assert first.cmd(f"MAIL FROM:{SENDER}").code == 250
        assert first.cmd("RCPT TO:<user@victim.example>").code == 250
    finally:
        first.finish()
    second = Session(site, remote_ip=STRANGER_IP)
    try:
        assert second.cmd("EHLO client.example.net").code == 250
        assert second.cmd(f"MAIL FROM:{SENDER}").code == 250
        assert second.cmd("RCPT TO:<user@victim.example>").code == 550
    finally:
        second.finish()


@pytest.mark.parametrize("probe, accepted", [
    ("<user@[192.0.2.1]>", True),
    ("<user@[192.000.002.001]>", False),
    ("<user@[IPv6:::ffff:192.0.2.1]>", False),
    ("<user@[192.0.2.10]>", False),
    ("<user@192.0.2.1>", False),
])
def test_ip_literal_is_ours_only_as_listed(tmp_path, probe, accepted):
    queue = tmp_path / "queue"
    app = build_app(tmp_path / "config", ["relay", "rcpt_ok", f"capture {queue}"],
                    {"rcpthosts": ["example.org", "[192.0.2.1]"]})
    session = Session(app, remote_ip=STRANGER_IP)
    try:
        assert session.cmd("EHLO client.example.net").code == 250
        assert session.cmd(f"MAIL FROM:{SENDER}").code == 250
        assert session.cmd("RCPT TO:" + probe).code == (250 if accepted else 550)
    finally:
        session.finish()


# -- generated probes --------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the test extras install it
    st = None

# Pieces of the classic probes; a generated path is a few of them in a row.
PIECES = ["user", "postmaster", "@", "@", "%", "!", ".", ",", ":", '"', "\\", "<", ">",
          "[", "]", " ", "\t", "example.org", "victim.example", "x.example.org",
          "EXAMPLE.ORG", "mx.example.org", "parkway.example", "[192.0.2.1]",
          "IPv6:", "\u0430", "\u212a", "\u3002", "\u00e9", "_", "-", "\r", "=",
          "xn--", "localhost"]


def _joined(pieces, max_size):
    return st.lists(st.sampled_from(pieces), min_size=1, max_size=max_size).map("".join)


def generated_probes(test):
    if st is None:
        return pytest.mark.skip(reason="hypothesis is not installed")(test)
    domains = ["example.org", "x.example.org", "victim.example", "parkway.example",
               "mx.example.org", "[192.0.2.1]", "EXAMPLE.ORG", "victim"]
    path = st.one_of(
        _joined(PIECES, 9),
        st.tuples(_joined(PIECES, 4), _joined(PIECES, 3), st.sampled_from(domains))
        .map(lambda t: f"{t[0]}@{t[1]}{t[2]}"),
    )
    return settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])(
        given(st.lists(path, min_size=1, max_size=12))(test))


@generated_probes
def test_generated_probes_never_relay(site, paths):
    """Pipelined RCPTs built from probe pieces, bracketed or not: whatever
    the stranger gets accepted lands in the queue, and is ours."""
    probes = [p if i % 2 else f"<{p}>" for i, p in enumerate(paths)]
    session = Session(site, remote_ip=STRANGER_IP)
    try:
        assert session.cmd("EHLO client.example.net").code == 250
        assert session.cmd(f"MAIL FROM:{SENDER}").code == 250
        session.send("".join(f"RCPT TO:{probe}\r\n" for probe in probes))
        replies = [session.reply() for _ in probes]
        assert all(r is not None and r.code in (250, 500, 501, 550, 555) for r in replies), replies
        if any(r.code == 250 for r in replies):
            assert session.cmd("DATA").code == 354
            session.send("Subject: generated\r\n\r\nx\r\n.\r\n")
            queued = session.reply()
            assert queued.code == 250, queued
            _, envelope = queued_files(site.queue_dir, queued_number(queued))
            assert len(envelope) == 1 + sum(r.code == 250 for r in replies)
            for recipient in envelope[1:]:
                assert is_ours(recipient), recipient
    finally:
        log = session.finish()
    assert session.error is None, session.error
    assert tracebacks(log) == []
