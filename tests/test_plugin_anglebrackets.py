"""dont_require_anglebrackets and parse_addr_withhelo: MAIL/RCPT argument forms."""

import pytest


@pytest.fixture
def session(plugin_session):
    def factory(*plugins):
        return plugin_session([*plugins, "returns rcpt OK"])
    return factory


# -- dont_require_anglebrackets ------------------------------------------------

def test_without_the_plugin_a_bare_address_is_refused(session):
    client = session()
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:ask@perl.org") == (
        501, ["could not parse your mail from command"])


@pytest.mark.parametrize("argument, shown", [
    ("FROM:ask@perl.org", "<ask@perl.org>"),
    ("FROM:ask@[1.2.3.4]", "<ask@[1.2.3.4]>"),     # t/addresses.t
    ("from: ask@perl.org SIZE=1230", "<ask@perl.org>"),
])
def test_brackets_are_added_to_a_bare_sender(session, argument, shown):
    client = session("dont_require_anglebrackets")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd(f"MAIL {argument}") == (
        250, [f"{shown}, sender OK - how exciting to get mail from you!"])
    assert client.log_contains(
        "(mail_pre) dont_require_anglebrackets: fail, added MAIL angle brackets")
    assert client.log_contains("(mail_pre) dont_require_anglebrackets: karma -2 (-2)")


def test_bracketed_paths_pass_unchanged_and_cost_nothing(session):
    client = session("dont_require_anglebrackets")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<ask@perl.org>").code == 250
    assert client.cmd("RCPT TO:<a@example.org>").code == 250
    assert client.cmd("MAIL FROM:").code == 503     # nested MAIL
    assert not client.log_contains("karma")
    assert not client.log_contains("angle brackets")


def test_null_sender_and_bare_recipient(session):
    client = session("dont_require_anglebrackets")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:").code == 250     # <> already bracketed
    assert client.cmd("RCPT TO:a@example.org") == (250, ["<a@example.org>, recipient ok"])
    assert client.log_contains("(rcpt_pre) dont_require_anglebrackets: "
                               "fail, added RCPT angle brackets")
    assert client.log_contains("karma -2 (-2)")


def test_added_brackets_do_not_make_garbage_valid(session):
    client = session("dont_require_anglebrackets")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:a@b@c>") == (501, ["could not parse your mail from command"])
    assert client.cmd("MAIL FROM:<ok@example.org>").code == 250
    assert client.cmd("RCPT TO:abuse") == (501, ["could not parse recipient"])
    assert client.cmd("RCPT TO:postmaster") == (250, ["<postmaster>, recipient ok"])


# -- parse_addr_withhelo --------------------------------------------------------

def test_helo_session_refuses_mail_parameters(session):
    client = session("parse_addr_withhelo")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net> SIZE=100") == (
        501, ["No parameters allowed in MAIL"])
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER") == (
        501, ["No parameters allowed in RCPT"])
    assert client.cmd("RCPT TO: <b@example.org>  ").code == 250
    assert client.log_contains("parse_addr_withhelo: _parse() cmd=[mail], "
                               "line=[FROM:<a@example.net> SIZE=100]")


def test_ehlo_session_keeps_the_esmtp_parser(session):
    client = session("parse_addr_withhelo")
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net> SIZE=100").code == 250
    assert not client.log_contains("_parse()")


@pytest.mark.parametrize("line, reply", [
    ("MAIL FROM <a@example.net>", "Syntax error in command"),
    ("MAIL TO:<a@example.net>", "Syntax error in command"),
    ("MAIL FROM:nobody", "Could not parse your MAIL FROM command"),
    ("MAIL FROM:a@example.net BODY=8BITMIME", "No parameters allowed in MAIL"),
])
def test_helo_session_bad_mail_lines(session, line, reply):
    client = session("parse_addr_withhelo")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd(line) == (501, [reply])
    assert client.cmd("RCPT TO:<b@example.org>") == (503, ["Use MAIL before RCPT"])


def test_helo_session_bad_rcpt_lines(session):
    client = session("parse_addr_withhelo")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:") == (      # null sender
        250, ["<>, sender OK - how exciting to get mail from you!"])
    assert client.cmd("RCPT FROM:<b@example.org>") == (501, ["Syntax error in command"])
    assert client.cmd("RCPT TO:somebody") == (501, ["Could not parse your RCPT TO command"])
    # a bare address passes the parser; the core still wants brackets
    assert client.cmd("RCPT TO:b@example.org") == (501, ["could not parse recipient"])


def test_both_plugins_accept_bare_addresses_after_helo(session):
    client = session("parse_addr_withhelo", "dont_require_anglebrackets")
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:a@example.net").code == 250
    assert client.cmd("RCPT TO:postmaster").code == 250
    assert client.cmd("RCPT TO:b@example.org SIZE=1") == (501, ["No parameters allowed in RCPT"])
    assert client.cmd("RCPT TO:b@example.org") == (250, ["<b@example.org>, recipient ok"])
