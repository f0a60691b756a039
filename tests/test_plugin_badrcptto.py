"""badrcptto: listed recipients (addresses, @domains, patterns, reasons),
karma -2, immune sessions, and bad config lines."""

import pytest

BADRCPTTO = [
    "nosign",
    "(unclosed+",
    "spamtrap@example.org",
    "@old.example.org",
    r"^(info|sales)@example\.org$",
    "boss@example.org    Boss does not read mail here",
    r"^\D+@digits\.example$",
    "example.com$",
]


@pytest.fixture
def session(smtp_session, make_app):
    def factory(entries=BADRCPTTO, hello="EHLO client.example.net", **kwargs):
        config = {"rcpthosts": ["example.org", ".example.org", "example.com",
                                "digits.example"]}
        if entries is not None:
            config["badrcptto"] = entries
        client = smtp_session(app=make_app(["badrcptto", "rcpt_ok"], config), **kwargs)
        assert client.cmd(hello).code == 250
        assert client.cmd("MAIL FROM:<sender@example.net>").code == 250
        return client
    return factory


@pytest.mark.parametrize("recipient, entry, log", [
    ("spamtrap@example.org", "spamtrap@example.org", "fail, rcpt match"),
    ("SpamTrap@Example.ORG", "spamtrap@example.org", "fail, rcpt match"),
    ("x@OLD.example.org", "@old.example.org", "fail, host match"),
    ("Info@Example.org", r"^(info|sales)@example\.org$", "fail, pattern match"),
    ("user@example.com", "example.com$", "fail, pattern match"),
])
def test_listed_recipient(session, recipient, entry, log):
    client = session()
    reply = client.cmd(f"RCPT TO:<{recipient}>")
    assert reply == (550, [f"5.1.1 mail to {entry} not accepted here (#5.1.1)"])
    assert client.log_contains(f"(rcpt) badrcptto: {log}")
    assert client.log_contains("(rcpt) badrcptto: karma -2 (-2)")


def test_listed_recipient_after_helo(session):
    client = session(hello="HELO client.example.net")
    assert client.cmd("RCPT TO:<spamtrap@example.org>") == \
        (550, ["mail to spamtrap@example.org not accepted here (#5.1.1)"])


def test_reason_is_the_reply(session):
    client = session()
    assert client.cmd("RCPT TO:<boss@example.org>") == \
        (550, ["5.7.1 Boss does not read mail here"])


def test_pattern_is_not_lower_cased(session):
    # \D+ (non-digits) would become \d+ if the pattern were lower-cased.
    client = session()
    assert client.cmd("RCPT TO:<abc@digits.example>").code == 550
    assert client.cmd("RCPT TO:<123@digits.example>").code == 250


@pytest.mark.parametrize("recipient", ["friend@example.org", "x@new.example.org",
                                       "infos@example.org", "sales2@example.org",
                                       "xspamtrap@example.org"])
def test_unlisted_recipient(session, recipient):
    client = session()
    assert client.cmd(f"RCPT TO:<{recipient}>").code == 250
    assert client.log_contains("(rcpt) badrcptto: pass")
    assert "karma" not in client.session.connection.notes


def test_karma_adds_up(session):
    client = session()
    client.cmd("RCPT TO:<spamtrap@example.org>")
    client.cmd("RCPT TO:<x@old.example.org>")
    assert client.session.connection.notes["karma"] == -4


def test_relay_client_is_skipped(session):
    client = session(relay_client=True)
    assert client.cmd("RCPT TO:<spamtrap@example.org>").code == 250
    assert client.log_contains("(rcpt) badrcptto: skip, relay client")


def test_empty_config(session):
    client = session(entries=None)
    assert client.cmd("RCPT TO:<spamtrap@example.org>").code == 250
    assert client.log_contains("badrcptto: skip, empty config")


def test_recipient_without_domain(session):
    client = session()
    assert client.cmd("RCPT TO:<postmaster>").code == 250
    assert client.log_contains("badrcptto: skip, missing host or user")


def test_bad_config_lines(session):
    client = session()
    assert client.cmd("RCPT TO:<friend@example.org>").code == 250
    assert client.log_contains("badrcptto: bad config: no @ sign in nosign")
    assert client.log_contains("badrcptto: bad pattern (unclosed+")


@pytest.mark.parametrize("path", ["<spamtrap@>", "spamtrap@example.org>", "<@example.org>"])
def test_unparsable_recipient(session, path):
    client = session()
    assert client.cmd(f"RCPT TO:{path}").code == 501
    assert not client.log_contains("badrcptto:")


def test_lenient_local_part_is_not_the_listed_address(session):
    # The engine accepts "spamtrap@"@example.org; it is not spamtrap@example.org.
    client = session()
    assert client.cmd("RCPT TO:<spamtrap@@example.org>").code == 250
    assert client.log_contains("(rcpt) badrcptto: pass")
