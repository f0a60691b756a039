"""badmailfrom (senders: addresses, @domains, patterns, reasons, reject
modes, karma) and badmailfromto (sender/recipient pairs)."""

import pytest

BADMAILFROM = [
    "bad@example.com",
    "@test.net",
    r"^.*spam.*@example\.biz$   Go away spammer",
    "evil@example.org You are not welcome",
    "noatsign",
    "[unclosed*",
]
DEFAULT = "Your envelope sender is in my badmailfrom list"


@pytest.fixture
def session(smtp_session, make_app):
    def factory(plugin="badmailfrom", entries=BADMAILFROM, hello="EHLO client.example.net",
                **kwargs):
        config = {"rcpthosts": ["example.org"]}
        if entries is not None:
            config["badmailfrom"] = entries
        app = make_app([plugin, "rcpt_ok"], config)
        client = smtp_session(app=app, **kwargs)
        assert client.cmd(hello).code == 250
        return client
    return factory


# -- badmailfrom ---------------------------------------------------------------

@pytest.mark.parametrize("sender", ["bad@example.com", "BAD@Example.COM", "x@test.net",
                                    "X@TEST.NET"])
def test_listed_sender_default_reason(session, sender):
    client = session()
    assert client.cmd(f"MAIL FROM:<{sender}>") == (550, [f"5.7.1 {DEFAULT}"])
    assert client.log_contains("(mail) badmailfrom: karma -1 (-1)")
    assert client.log_contains("(mail) badmailfrom: fail")
    assert client.session.connection.notes["karma"] == -1


def test_listed_sender_after_helo(session):
    client = session(hello="HELO client.example.net")
    assert client.cmd("MAIL FROM:<bad@example.com>") == (550, [DEFAULT])


@pytest.mark.parametrize("sender, reason", [
    ("evil@example.org", "You are not welcome"),
    ("cheapspam@example.biz", "Go away spammer"),
    ("SPAMMER@example.biz", "Go away spammer"),       # matched lower-cased
])
def test_custom_reason(session, sender, reason):
    client = session()
    assert client.cmd(f"MAIL FROM:<{sender}>") == (550, [f"5.7.1 {reason}"])


@pytest.mark.parametrize("sender", [
    "good@example.com", "bad@example.com.au", "x@sub.test.net", "x@test.network",
    "spam@example.biz.org", "notbad@example.com",
])
def test_unlisted_sender_passes(session, sender):
    client = session()
    assert client.cmd(f"MAIL FROM:<{sender}>").code == 250
    assert client.log_contains("(mail) badmailfrom: pass")
    assert "karma" not in client.session.connection.notes


def test_pattern_entry(session):
    client = session(entries=["test.net$"])
    assert client.cmd("MAIL FROM:<x@sub.test.net>").code == 550
    client.cmd("RSET")
    assert client.cmd("MAIL FROM:<x@test.net.example>").code == 250
    assert client.log_contains("badmailfrom pattern (test.net$) match for x@sub.test.net")


@pytest.mark.parametrize("sender, log", [
    ("<>", "skip, null sender"),
    ("<postmaster>", "skip, missing user or host"),
])
def test_senders_not_checked(session, sender, log):
    client = session(entries=[r".*"])
    assert client.cmd(f"MAIL FROM:{sender}").code == 250
    assert client.log_contains(f"badmailfrom: {log}")


def test_empty_list(session):
    client = session(entries=None)
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 250
    assert client.log_contains("badmailfrom: skip, empty list")


def test_relay_client_is_immune(session):
    client = session(relay_client=True)
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 250
    assert client.log_contains("(mail) badmailfrom: skip, relay client")


def test_reject_0_only_logs(session):
    client = session(plugin="badmailfrom reject 0")
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 250
    assert client.log_contains("badmailfrom: fail, tolerated")
    assert client.session.connection.notes["karma"] == -1


def test_reject_naughty_defers(session):
    client = session(plugin="badmailfrom reject naughty")
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 250
    assert client.log_contains("badmailfrom: fail, NAUGHTY")
    assert client.session.connection.notes["naughty"] == [f"(badmailfrom) {DEFAULT}"]


def test_reject_type_temp(session):
    client = session(plugin="badmailfrom reject_type temp")
    assert client.cmd("MAIL FROM:<bad@example.com>") == (450, [f"4.7.1 {DEFAULT}"])


def test_reject_type_disconnect(session):
    client = session(plugin="badmailfrom reject_type disconnect")
    assert client.cmd("MAIL FROM:<bad@example.com>") == (550, [f"5.7.1 {DEFAULT}"])
    assert client.closed()


def test_bad_config_lines_are_skipped(session):
    client = session()
    assert client.cmd("MAIL FROM:<nobody@example.com>").code == 250
    assert client.log_contains("badmailfrom: bad config: no @ sign in noatsign")
    assert client.log_contains("badmailfrom: bad pattern [unclosed*")
    # lines after a broken one still count
    client2 = session(entries=["[unclosed*", "bad@example.com"])
    assert client2.cmd("MAIL FROM:<bad@example.com>").code == 550


# -- badmailfromto --------------------------------------------------------------

PAIRS = [
    "stalker@example.com\tvictim@example.org",
    "@example.net  Victim2@Example.org",
    "x@example.net victim3@example.org",
    "nosign victim@example.org",
    "lonely@example.com",
]


@pytest.fixture
def pairs_session(smtp_session, make_app):
    def factory(hello="EHLO client.example.net", pairs=PAIRS):
        app = make_app(["badmailfromto", "rcpt_ok"],
                       {"rcpthosts": ["example.org"], "badmailfromto": pairs})
        client = smtp_session(app=app)
        assert client.cmd(hello).code == 250
        return client
    return factory


def test_listed_pair_is_refused(pairs_session):
    client = pairs_session()
    assert client.cmd("MAIL FROM:<Stalker@Example.com>").code == 250
    assert client.cmd("RCPT TO:<Victim@Example.ORG>") == \
        (550, ["5.7.1 mail to victim@example.org not accepted here"])
    assert client.log_contains("badmailfromto: fail, stalker@example.com to victim@example.org")
    # other recipients of the same sender are fine
    assert client.cmd("RCPT TO:<friend@example.org>").code == 250


def test_listed_pair_after_helo(pairs_session):
    client = pairs_session(hello="HELO client.example.net")
    client.cmd("MAIL FROM:<stalker@example.com>")
    assert client.cmd("RCPT TO:<victim@example.org>") == \
        (550, ["mail to victim@example.org not accepted here"])


def test_domain_sender_and_every_matching_entry(pairs_session):
    client = pairs_session()
    assert client.cmd("MAIL FROM:<x@EXAMPLE.net>").code == 250
    assert client.session.transaction.notes["badmailfromto"] == \
        ["@example.net", "x@example.net"]
    assert client.cmd("RCPT TO:<victim2@example.org>").code == 550
    assert client.cmd("RCPT TO:<victim3@example.org>").code == 550
    assert client.cmd("RCPT TO:<victim@example.org>").code == 250


def test_other_senders_pass(pairs_session):
    client = pairs_session()
    assert client.cmd("MAIL FROM:<someone@example.com>").code == 250
    assert client.cmd("RCPT TO:<victim@example.org>").code == 250
    assert client.log_contains("badmailfromto: pass, sender not listed")


def test_note_is_per_transaction(pairs_session):
    client = pairs_session()
    client.cmd("MAIL FROM:<stalker@example.com>")
    assert client.cmd("RCPT TO:<victim@example.org>").code == 550
    assert client.cmd("RSET").code == 250
    client.cmd("MAIL FROM:<friend@example.com>")
    assert client.cmd("RCPT TO:<victim@example.org>").code == 250


@pytest.mark.parametrize("sender, log", [
    ("<>", "skip, null sender"),
    ("<postmaster>", "skip, missing user or host"),
])
def test_badmailfromto_senders_not_checked(pairs_session, sender, log):
    client = pairs_session()
    assert client.cmd(f"MAIL FROM:{sender}").code == 250
    assert client.log_contains(f"badmailfromto: {log}")
    assert client.cmd("RCPT TO:<victim@example.org>").code == 250


def test_badmailfromto_empty_list(pairs_session):
    client = pairs_session(pairs=["# nothing yet"])
    client.cmd("MAIL FROM:<stalker@example.com>")
    assert client.log_contains("badmailfromto: skip, empty list")
    assert client.cmd("RCPT TO:<victim@example.org>").code == 250


def test_badmailfromto_bad_lines(pairs_session):
    client = pairs_session()
    client.cmd("MAIL FROM:<lonely@example.com>")
    assert client.log_contains("badmailfromto: bad config, no @ sign in nosign")
    # a sender line without a recipient refuses nobody
    assert client.cmd("RCPT TO:<victim@example.org>").code == 250
    assert client.log_contains("badmailfromto: pass, recipient not listed")
