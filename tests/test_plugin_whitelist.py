"""whitelist: whitelisthosts, WHITELISTCLIENT, whitelisthelo, whitelistsenders,
whitelistrcpt and per_recipient mode, over real sessions; later plugins see
the session as immune."""

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd.plugin import PluginError

HOSTS = [
    "# trusted relays",
    "192.0.2.7",
    "198.51.100.",
    "203.0.113.0/25   # office",
    "10.1",
    "2001:db8:aaaa::7",
    "2001:db8:bbbb:",
    "2001:db8:c000::/36",
]


@pytest.fixture(autouse=True)
def no_whitelistclient(monkeypatch):
    monkeypatch.delenv("WHITELISTCLIENT", raising=False)
    monkeypatch.delenv("RELAYCLIENT", raising=False)


@pytest.fixture
def app(make_app):
    def factory(plugins=("whitelist",), **files):
        config = {"whitelisthosts": HOSTS, "rcpthosts": ["example.org"],
                  "badmailfrom": ["bad@example.com"],
                  "badrcptto": ["trap@example.org"]}
        config.update(files)
        return make_app(list(plugins), config,
                        plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
    return factory


def connect(smtp_session, app, ip="192.0.2.10"):
    client = smtp_session(app=app, remote_ip=ip)
    assert client.greeting.code == 220
    return client


def notes(client):
    return client.session.connection.notes


# -- whitelisthosts ----------------------------------------------------------

@pytest.mark.parametrize("ip", [
    "192.0.2.7", "198.51.100.1", "198.51.100.255", "203.0.113.0", "203.0.113.127",
    "10.1.2.3", "2001:db8:aaaa::7", "2001:DB8:AAAA:0:0:0:0:7", "2001:db8:bbbb:1::2",
    "2001:db8:cfff::1", "::ffff:192.0.2.7"])
def test_listed_host_is_whitelisted(smtp_session, app, ip):
    client = connect(smtp_session, app(), ip)
    assert notes(client)["whitelisthost"] == 1
    assert notes(client)["karma"] == 5
    assert client.log_contains("(connect) whitelist: pass, is a whitelisted host")
    assert client.log_contains("(connect) whitelist: karma 5 (5)")


@pytest.mark.parametrize("ip", [
    "192.0.2.70",       # an address entry is not a text prefix (original: match)
    "192.0.2.8", "198.51.101.1", "203.0.113.128", "10.10.0.1", "10.2.0.1",
    "2001:db8:aaaa::70", "2001:db8:bbbc::1", "2001:db8:d000::1", "192.0.2.10"])
def test_other_hosts_are_not(smtp_session, app, ip):
    client = connect(smtp_session, app(), ip)
    assert "whitelisthost" not in notes(client)
    assert "karma" not in notes(client)
    assert client.log_contains(f"whitelist: skip: {ip} is not whitelisted")


def test_host_match_skips_later_connect_plugins(smtp_session, app):
    whitelisted = app(["whitelist", "returns connect DENY go away"])
    client = connect(smtp_session, whitelisted, "192.0.2.7")
    assert client.greeting.lines[0].startswith("mx.example.org ESMTP")
    assert "returns_calls" not in notes(client)

    client = smtp_session(app=whitelisted, remote_ip="192.0.2.10")
    assert client.greeting == (550, ["go away"])
    assert client.closed()


def test_whitelisted_host_is_immune_for_later_plugins(smtp_session, app):
    client = connect(smtp_session, app(["whitelist", "badmailfrom", "badrcptto",
                                        "rcpt_ok"]), "198.51.100.9")
    assert client.cmd("EHLO client.example.net").code == 250
    # badmailfrom runs (whitelist has no sender match) and sees an immune session
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 250
    assert client.log_contains("(mail) badmailfrom: skip, whitelisted host")
    assert client.cmd("RCPT TO:<trap@example.org>").code == 250
    assert client.log_contains("(rcpt) badrcptto: skip, whitelisted host")


def test_not_whitelisted_host_meets_the_later_plugins(smtp_session, app):
    client = connect(smtp_session, app(["whitelist", "badmailfrom", "rcpt_ok"]))
    client.cmd("HELO client.example.net")
    assert client.cmd("MAIL FROM:<bad@example.com>") == \
        (550, ["Your envelope sender is in my badmailfrom list"])


def test_invalid_host_entries_are_ignored_with_a_warning(smtp_session, app):
    entries = ["not-an-ip", "300.1.1.", "10.0.0.0/33", "2001:db8::1::2", "fe80:xyz:",
               "192.0.2.7"]
    client = connect(smtp_session, app(whitelisthosts=entries), "192.0.2.7")
    assert notes(client)["whitelisthost"] == 1
    for entry in entries[:-1]:
        assert client.log_contains(f"ignoring invalid entry in whitelisthosts: {entry}")


def test_empty_and_missing_hosts_file(smtp_session, app):
    client = connect(smtp_session, app(whitelisthosts=["# nothing"]), "192.0.2.7")
    assert "whitelisthost" not in notes(client)


# -- WHITELISTCLIENT ---------------------------------------------------------

def test_whitelistclient_env(smtp_session, app, monkeypatch):
    monkeypatch.setenv("WHITELISTCLIENT", "")
    client = connect(smtp_session, app(["whitelist", "returns connect DENY go away",
                                        "badmailfrom"]), "192.0.2.10")
    assert notes(client)["whitelistclient"] == 1
    assert notes(client)["karma"] == 5
    assert "whitelisthost" not in notes(client)
    assert client.log_contains("(connect) whitelist: pass, is whitelisted client")
    assert "returns_calls" not in notes(client)
    # only a note: is_immune does not honour it
    client.cmd("HELO client.example.net")
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 550


# -- whitelisthelo -----------------------------------------------------------

def test_whitelisted_helo(smtp_session, app):
    helo_app = app(["whitelist", "returns helo DENY no", "returns ehlo DENY no",
                    "badmailfrom"], whitelisthelo=["Trusted.Example.NET"])
    client = connect(smtp_session, helo_app)
    reply = client.cmd("HELO trusted.example.net")
    assert reply.code == 250
    assert "Hi client.example.net [192.0.2.10]" in reply.text
    assert notes(client)["whitelisthelo"] == 1
    assert client.log_contains("(helo) whitelist: pass, helo host trusted.example.net "
                               "in whitelisthelo")
    # not part of is_immune: HELO names are whatever the client says
    assert client.cmd("MAIL FROM:<bad@example.com>").code == 550

    client = connect(smtp_session, helo_app)
    assert client.cmd("EHLO Trusted.Example.Net").code == 250
    client = connect(smtp_session, helo_app)
    assert client.cmd("EHLO other.example.net") == (550, ["no"])
    assert "whitelisthelo" not in notes(client)


# -- whitelistsenders --------------------------------------------------------

SENDERS = ["Friend@Example.com", "partner.example", "@ally.example"]


@pytest.mark.parametrize("sender", [
    "friend@example.com", "FRIEND@EXAMPLE.COM", "anyone@partner.example",
    "someone@ALLY.example"])
def test_whitelisted_sender(smtp_session, app, sender):
    client = connect(smtp_session, app(
        ["whitelist", "returns mail DENY no", "badrcptto", "rcpt_ok"],
        whitelistsenders=SENDERS))
    client.cmd("EHLO client.example.net")
    assert client.cmd(f"MAIL FROM:<{sender}>").code == 250
    assert client.session.transaction.notes["whitelistsender"] == 1
    assert client.log_contains(
        f"(mail) whitelist: pass, envelope sender {sender.lower()} in whitelistsenders")
    # later plugins see the message as immune
    assert client.cmd("RCPT TO:<trap@example.org>").code == 250
    assert client.log_contains("(rcpt) badrcptto: skip, whitelisted sender")
    # unlike qpsmtpd, a (forgeable) whitelisted sender does not open relaying
    assert client.cmd("RCPT TO:<someone@elsewhere.example>").code == 550


@pytest.mark.parametrize("sender", [
    "", "enemy@example.com", "friend@example.com.evil", "a@sub.partner.example",
    "partner.example@other.example"])
def test_other_senders_are_not_whitelisted(smtp_session, app, sender):
    client = connect(smtp_session, app(["whitelist", "returns mail DENY no"],
                                       whitelistsenders=SENDERS))
    client.cmd("EHLO client.example.net")
    assert client.cmd(f"MAIL FROM:<{sender}>") == (550, ["5.7.1 no"])
    assert "whitelistsender" not in client.session.transaction.notes


def test_sender_note_lasts_one_transaction(smtp_session, app):
    client = connect(smtp_session, app(["whitelist", "badrcptto", "rcpt_ok"],
                                       whitelistsenders=SENDERS))
    client.cmd("HELO client.example.net")
    client.cmd("MAIL FROM:<friend@example.com>")
    assert client.cmd("RCPT TO:<trap@example.org>").code == 250
    assert client.cmd("RSET").code == 250
    assert "whitelistsender" not in client.session.transaction.notes
    client.cmd("MAIL FROM:<stranger@example.net>")
    assert client.cmd("RCPT TO:<trap@example.org>").code == 550


# -- whitelistrcpt -----------------------------------------------------------

def test_whitelisted_recipient_is_accepted_without_rcpt_ok(smtp_session, app):
    client = connect(smtp_session, app(["whitelist", "rcpt_ok"],
                                       whitelistrcpt=["abuse@example.org",
                                                      "@partner.example"]))
    client.cmd("HELO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<Abuse@Example.org>") == \
        (250, ["<Abuse@Example.org>, recipient ok"])
    # qpsmtpd's behaviour: OK at RCPT accepts, rcpt_ok never runs - even
    # for a domain that is not in rcpthosts
    assert client.cmd("RCPT TO:<x@partner.example>").code == 250
    assert not client.log_contains("running plugin: rcpt_ok")
    assert client.session.transaction.notes["whitelistrcpt"] == 2
    assert client.log_contains("(rcpt) whitelist: pass, recipient x@partner.example "
                               "in whitelistrcpt")
    assert client.cmd("RCPT TO:<x@elsewhere.example>") == \
        (550, ["Relaying denied (#5.7.1)"])
    assert client.session.transaction.notes["whitelistrcpt"] == 2


def test_recipient_without_domain_is_not_matched(smtp_session, app):
    client = connect(smtp_session, app(["whitelist", "returns rcpt DENY no"],
                                       whitelistrcpt=["postmaster", "example.org"]))
    client.cmd("HELO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<postmaster>") == (550, ["no"])
    assert client.cmd("RCPT TO:<postmaster@example.org>").code == 250


# -- per_recipient -----------------------------------------------------------

def test_per_recipient_checks_everything_at_rcpt(smtp_session, app):
    per_rcpt = app(["whitelist per_recipient 1", "returns connect DENY go away"])
    client = smtp_session(app=per_rcpt, remote_ip="192.0.2.7")
    assert client.greeting == (550, ["go away"])

    client = connect(smtp_session, app(["whitelist per_recipient 1", "rcpt_ok"]),
                     "192.0.2.7")
    assert "whitelisthost" not in notes(client)
    client.cmd("HELO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<x@elsewhere.example>").code == 250
    assert client.cmd("RCPT TO:<y@elsewhere.example>").code == 250
    assert notes(client)["whitelisthost"] == 1
    assert notes(client)["karma"] == 5     # once per connection
    assert client.log_contains("(rcpt) whitelist: pass, is a whitelisted host")


@pytest.mark.parametrize("files, helo, sender, recipient", [
    ({"whitelisthelo": ["friendly.example"]}, "friendly.example", "a@b.example",
     "x@elsewhere.example"),
    ({"whitelistsenders": ["b.example"]}, "c.example", "a@b.example",
     "x@elsewhere.example"),
    ({"whitelistrcpt": ["elsewhere.example"]}, "c.example", "a@b.example",
     "x@elsewhere.example"),
])
def test_per_recipient_other_lists(smtp_session, app, files, helo, sender, recipient):
    client = connect(smtp_session, app(["whitelist per_recipient 1", "rcpt_ok"], **files))
    client.cmd(f"HELO {helo}")
    client.cmd(f"MAIL FROM:<{sender}>")
    assert client.cmd(f"RCPT TO:<{recipient}>").code == 250
    assert client.cmd("RCPT TO:<x@unlisted.example>").code == \
        (250 if "whitelisthelo" in files or "whitelistsenders" in files else 550)


@pytest.mark.parametrize("merge, global_entry_counts", [("1", True), ("0", False)])
def test_per_recipient_lists_from_user_config(smtp_session, app, tmp_path, merge,
                                              global_entry_counts):
    users = tmp_path / "users"
    (users / "alice").mkdir(parents=True)
    (users / "alice" / "whitelistsenders").write_text("# alice's friends\nfriend.example\n")
    plugins = [f"user_config {users}/%u", f"whitelist per_recipient 1 merge {merge}",
               "returns rcpt DENY no"]
    client = connect(smtp_session, app(plugins, whitelistsenders=["global.example"]))
    client.cmd("HELO c.example")
    client.cmd("MAIL FROM:<a@friend.example>")
    assert client.cmd("RCPT TO:<alice@example.org>").code == 250
    assert client.cmd("RCPT TO:<bob@example.org>") == (550, ["no"])

    client.cmd("RSET")
    client.cmd("MAIL FROM:<a@global.example>")
    # bob has no list of his own: the global file answers in both modes
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("RCPT TO:<alice@example.org>").code == \
        (250 if global_entry_counts else 550)


# -- arguments ---------------------------------------------------------------

def test_odd_arguments_stop_start_up(app):
    with pytest.raises(PluginError, match="Bad arguments"):
        app(["whitelist per_recipient"])
