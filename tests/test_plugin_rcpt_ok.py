"""rcpt_ok: our domains (me, rcpthosts, .suffix entries, morercpthosts.cdb),
bare postmaster, immune sessions, and ``550 Relaying denied (#5.7.1)``."""

import pytest

from qpsmtpd.address import Address
from qpsmtpd.cdb import write_cdb
from qpsmtpd.constants import DENY, OK

RCPTHOSTS = ["example.org", "  .example.com", "Mixed.Example.NET"]


@pytest.fixture
def session(smtp_session, make_app, tmp_path):
    def factory(hello="EHLO client.example.net", more=None, **kwargs):
        app = make_app(["rcpt_ok"], {"rcpthosts": RCPTHOSTS})
        if more is not None:
            write_cdb(str(tmp_path / "config" / "morercpthosts.cdb"),
                      {k.encode(): b"1" for k in more})
        client = smtp_session(app=app, **kwargs)
        assert client.cmd(hello).code == 250
        assert client.cmd("MAIL FROM:<sender@example.net>").code == 250
        return client
    return factory


@pytest.mark.parametrize("recipient, log", [
    ("user@example.org", "pass, example.org in rcpthosts"),
    ("User@EXAMPLE.ORG", "pass, example.org in rcpthosts"),
    ("x@mx.example.org", "pass, mx.example.org in rcpthosts"),        # config/me
    ("x@mixed.example.net", "pass, mixed.example.net in rcpthosts"),
    ("x@sub.example.com", "pass, sub.example.com in rcpthosts as .example.com"),
    ("x@a.b.EXAMPLE.com", "pass, a.b.example.com in rcpthosts as .example.com"),
])
def test_our_domains_are_accepted(session, recipient, log):
    client = session()
    reply = client.cmd(f"RCPT TO:<{recipient}>")
    assert reply == (250, [f"2.1.5 <{recipient}>, recipient ok"])
    assert client.log_contains(f"(rcpt) rcpt_ok: {log}")


@pytest.mark.parametrize("recipient", ["postmaster", "PostMaster"])
def test_bare_postmaster_is_mail_for_me(session, recipient):
    client = session()
    assert client.cmd(f"RCPT TO:<{recipient}>").code == 250
    assert client.log_contains("pass, mx.example.org in rcpthosts")


@pytest.mark.parametrize("recipient", [
    "x@example.com",          # ".example.com" does not cover example.com itself
    "x@notexample.com",
    "x@example.org.evil.example",
    "x@[192.0.2.1]",
])
def test_other_domains_are_relaying(session, recipient):
    client = session()
    assert client.cmd(f"RCPT TO:<{recipient}>") == \
        (550, ["5.7.1 Relaying denied (#5.7.1)"])


def test_relaying_denied_after_helo_has_no_enhanced_code(session):
    client = session(hello="HELO client.example.net")
    assert client.cmd("RCPT TO:<x@elsewhere.example>") == \
        (550, ["Relaying denied (#5.7.1)"])
    assert client.log_contains("fail, elsewhere.example not in morercpthosts")


def test_morercpthosts(session):
    client = session(more=["more.example", "Upper.Example"])
    assert client.cmd("RCPT TO:<x@MORE.example>").code == 250
    assert client.log_contains("pass, more.example found in morercpthosts")
    # cdb keys are exact: a key with capitals never matches the lower-cased host
    assert client.cmd("RCPT TO:<x@upper.example>").code == 550
    assert client.cmd("RCPT TO:<x@sub.more.example>").code == 550


def test_relay_client_may_send_anywhere(session):
    client = session(relay_client=True)
    assert client.cmd("RCPT TO:<x@elsewhere.example>").code == 250
    assert client.log_contains("(rcpt) rcpt_ok: skip, relay client")


def test_whitelisted_host_may_not_relay(session):
    # qpsmtpd let any immune session relay; only relay clients may here
    client = session(notes={"whitelisthost": "listed"})
    assert client.cmd("RCPT TO:<x@elsewhere.example>").code == 550
    assert client.cmd("RCPT TO:<x@example.org>").code == 250


# -- bad input ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["<abuse>", "<@example.com>", "<x@>", "x@example.org>"])
def test_unparsable_recipients_never_reach_the_plugin(session, path):
    client = session()
    assert client.cmd(f"RCPT TO:{path}").code == 501
    assert not client.log_contains("rcpt_ok:")


def test_recipient_without_domain(session):
    # Only another plugin (rcpt_pre) could produce one; it must not pass.
    client = session()
    plugin = client.app.dispatcher.plugins[0]
    live = client.session
    assert plugin.get_rcpt_host(Address("abuse", None)) == "mx.example.org"
    assert plugin.get_rcpt_host(Address("ABUSE", None)) == "mx.example.org"
    assert plugin.get_rcpt_host(None) is None
    assert plugin.hook_rcpt(live, Address("john", None), {}) == \
        (DENY, "Relaying denied (#5.7.1)")
    assert plugin.hook_rcpt(live, Address("abuse", None), {}) == OK
