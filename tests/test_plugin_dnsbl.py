"""dnsbl over real sessions, through the real resolver to the test DNS
server: TXT and A lists, messages, dnsbl_allow, RBLSMTPD, reject modes,
special recipients, IPv6, and what a dead or failing list costs."""

import pytest


pytest_plugins = ["dns_fixtures"]

CLIENT = "10.2.0.192"       # 192.0.2.10 reversed, the fixture's client
MESSAGE = "Subject: hi\r\n\r\nhello\r\n.\r\n"


@pytest.fixture(autouse=True)
def no_rblsmtpd(monkeypatch):
    monkeypatch.delenv("RBLSMTPD", raising=False)


@pytest.fixture
def listed(dns):
    dns.add(f"{CLIENT}.bl.example", "TXT", "Listed in bl.example, see https://bl.example/")
    return dns


def start(dns_session, plugins=("dnsbl",), zones=("bl.example",), **kwargs):
    config = {"dnsbl_zones": list(zones)}
    config.update(kwargs.pop("config", {}))
    client = dns_session(list(plugins), config, **kwargs)
    assert client.greeting.code == 220
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<sender@example.com>").code == 250
    return client


def notes(client):
    return client.session.connection.notes


# -- listed and not listed ----------------------------------------------------

def test_txt_listing_refuses_every_recipient(dns_session, listed):
    client = start(dns_session)
    for _ in range(2):
        reply = client.cmd("RCPT TO:<user@example.org>")
        assert reply == (550, ["5.7.1 Listed in bl.example, see https://bl.example/"])
    assert listed.asked(f"{CLIENT}.bl.example", "TXT")
    assert notes(client)["karma"] == -1          # once per connection
    assert client.log_contains("(rcpt) dnsbl: fail, bl.example")
    assert client.log_contains("dnsbl: 192.0.2.10 listed in bl.example: Listed in bl.example")
    assert client.log_contains("(rcpt) dnsbl: karma -1 (-1)")


def test_not_listed_passes_and_the_message_lands(dns_session, dns):
    client = start(dns_session)
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    assert client.queued()[0].endswith(b"Subject: hi\n\nhello\n")
    assert client.log_contains("(rcpt) dnsbl: pass")
    assert "karma" not in notes(client)


def test_rejectmsg_lines_come_first(dns_session, listed):
    client = start(dns_session, config={"dnsbl_rejectmsg": [
        "If you think you are listed in error,", "tell your provider."]})
    reply = client.cmd("RCPT TO:<user@example.org>")
    assert reply.code == 550
    assert reply.lines == ["5.7.1 If you think you are listed in error,",
                           "5.7.1 tell your provider.",
                           "5.7.1 Listed in bl.example, see https://bl.example/"]


def test_zone_message_asks_for_an_a_record(dns_session, dns):
    dns.add(f"{CLIENT}.a.example", "A", "127.0.0.2")
    client = start(dns_session, zones=["a.example:Blocked, see https://a.example/?%IP%"])
    reply = client.cmd("RCPT TO:<user@example.org>")
    assert reply == (550, ["5.7.1 Blocked, see https://a.example/?192.0.2.10"])
    assert dns.asked(f"{CLIENT}.a.example", "A")
    assert not dns.asked(f"{CLIENT}.a.example", "TXT")


@pytest.mark.parametrize("address", ["192.0.2.1", "127.255.255.254"])
def test_a_answers_that_are_not_listings(dns_session, dns, address):
    dns.add(f"{CLIENT}.a.example", "A", address)
    client = start(dns_session, zones=["a.example:Blocked"])
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert client.log_contains(f"a.example answered {address}: not a listing")


def test_first_zone_in_the_file_gives_the_reply(dns_session, dns):
    dns.add(f"{CLIENT}.first.example", "TXT", "first says no").delay(
        f"{CLIENT}.first.example", 0.3)
    dns.add(f"{CLIENT}.second.example", "TXT", "second says no")
    client = start(dns_session, zones=["first.example", "second.example"])
    assert client.cmd("RCPT TO:<user@example.org>") == (550, ["5.7.1 first says no"])


def test_ipv6_client_is_looked_up_in_nibble_form(dns_session, dns):
    nibbles = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    dns.add(f"{nibbles}.bl.example", "TXT", "IPv6 spammer")
    client = start(dns_session, remote_ip="2001:db8::1")
    assert client.cmd("RCPT TO:<user@example.org>") == (550, ["5.7.1 IPv6 spammer"])


def test_empty_txt_names_the_zone(dns_session, dns):
    dns.add(f"{CLIENT}.bl.example", "TXT", "")
    client = start(dns_session)
    assert client.cmd("RCPT TO:<user@example.org>") == (550, ["5.7.1 Blocked by bl.example"])


# -- special recipients, immunity, allow list -----------------------------------------

@pytest.mark.parametrize("recipient", ["postmaster@example.org", "Abuse@example.org",
                                       "mailer-daemon@example.org", "root@example.org",
                                       "postmaster"])
def test_special_accounts_are_always_accepted(dns_session, listed, recipient):
    client = start(dns_session)
    assert client.cmd(f"RCPT TO:<{recipient}>").code == 250
    user = recipient.split("@")[0]
    assert client.log_contains(f"skip, don't blacklist special account: {user}")
    assert client.cmd("RCPT TO:<user@example.org>").code == 550


def test_client_that_became_a_relay_client_is_not_refused(dns_session, listed):
    client = start(dns_session)
    client.session.connection.relay_client = True     # as after AUTH
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert client.log_contains("(rcpt) dnsbl: skip, relay client")


def test_relay_client_is_not_looked_up(dns_session, listed):
    client = start(dns_session, relay_client=True)
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert listed.queries == []


@pytest.mark.parametrize("entry", ["192.0.2.10", "192.0.2.", "192.0.", "192.0.2.0/24",
                                   "  192.0.2.10  # our office"])
def test_dnsbl_allow_skips_the_lookups(dns_session, listed, entry):
    client = start(dns_session, config={"dnsbl_allow": [entry]})
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert listed.queries == []
    assert client.log_contains("skip, 192.0.2.10 in dnsbl_allow")


@pytest.mark.parametrize("entry", ["192.0.2.1", "192.0.2.100", "192.0.20.", "10.0.0.0/8",
                                   "not/an/entry", "2001:db8::"])
def test_dnsbl_allow_other_entries_do_not_match(dns_session, listed, entry):
    client = start(dns_session, config={"dnsbl_allow": [entry]})
    assert client.cmd("RCPT TO:<user@example.org>").code == 550


def test_rblsmtpd_empty_means_no_checks(dns_session, listed, monkeypatch):
    monkeypatch.setenv("RBLSMTPD", "")
    client = start(dns_session)
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert listed.queries == []
    assert client.log_contains("RBLSMTPD set, but empty for 192.0.2.10")


def test_rblsmtpd_text_is_the_refusal(dns_session, dns, monkeypatch):
    monkeypatch.setenv("RBLSMTPD", "-You are blocked: %IP%")
    client = start(dns_session, config={"dnsbl_rejectmsg": "Ask your provider."})
    reply = client.cmd("RCPT TO:<user@example.org>")
    assert reply == (550, ["5.7.1 Ask your provider.", "5.7.1 You are blocked: 192.0.2.10"])
    assert dns.queries == []


# -- reject settings --------------------------------------------------------------

def test_reject_0_only_logs(dns_session, listed):
    client = start(dns_session, plugins=["dnsbl reject 0"])
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert client.log_contains("dnsbl: fail, tolerated, bl.example")
    assert notes(client)["karma"] == -1


@pytest.mark.parametrize("line", ["dnsbl reject_type disconnect", "dnsbl disconnect"])
def test_reject_type_disconnect_closes(dns_session, listed, line):
    client = start(dns_session, plugins=[line])
    assert client.cmd("RCPT TO:<user@example.org>").code == 550
    assert client.closed()


def test_reject_type_temp(dns_session, listed):
    client = start(dns_session, plugins=["dnsbl reject_type temp"])
    assert client.cmd("RCPT TO:<user@example.org>") == (
        450, ["4.7.1 Listed in bl.example, see https://bl.example/"])


def test_reject_naughty_defers_to_naughty(dns_session, listed):
    client = start(dns_session, plugins=["dnsbl reject naughty reject_type disconnect"])
    assert notes(client)["naughty"] == [
        "(dnsbl) Listed in bl.example, see https://bl.example/"]
    assert notes(client)["naughty_reject_type"] == "disconnect"
    assert client.log_contains("(connect) dnsbl: fail, NAUGHTY, bl.example")
    assert client.cmd("RCPT TO:<user@example.org>").code == 250


def test_special_account_withdraws_only_its_own_deferred_rejection(dns_session, listed):
    client = start(dns_session, plugins=["dnsbl reject naughty"])
    notes(client)["naughty"].append("(helo) I do not believe you")
    assert client.cmd("RCPT TO:<abuse@example.org>").code == 250
    assert notes(client)["naughty"] == ["(helo) I do not believe you"]
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert notes(client)["naughty"] == [
        "(helo) I do not believe you",
        "(dnsbl) Listed in bl.example, see https://bl.example/"]


def test_naughty_clean_client_sets_nothing(dns_session, dns):
    client = start(dns_session, plugins=["dnsbl reject naughty"])
    assert "naughty" not in notes(client)
    assert client.cmd("RCPT TO:<user@example.org>").code == 250


# -- failures, timeouts -----------------------------------------------------------

def test_three_dead_lists_cost_one_timeout(dns_session, dns, elapsed):
    dns.drop("*.dead1.example", "*.dead2.example", "*.dead3.example")
    client, greeting = elapsed(start, dns_session,
                               zones=["dead1.example", "dead2.example", "dead3.example"])
    assert greeting < 0.9                       # the lookups run in the background
    reply, seconds = elapsed(client.cmd, "RCPT TO:<user@example.org>")
    assert reply.code == 250
    assert 0.4 < seconds < 2.0                  # what is left of one 1 s timeout
    for zone in ("dead1.example", "dead2.example", "dead3.example"):
        assert client.log_contains(f"dnsbl: {zone} query failed: timeout")
    assert client.log_contains("(rcpt) dnsbl: pass")
    reply, seconds = elapsed(client.cmd, "RCPT TO:<other@example.org>")
    assert reply.code == 250 and seconds < 0.2   # decided once per connection


def test_servfail_list_is_skipped_and_the_others_count(dns_session, listed):
    listed.servfail(f"{CLIENT}.broken.example")
    client = start(dns_session, zones=["broken.example", "bl.example"])
    assert client.cmd("RCPT TO:<user@example.org>").code == 550
    assert client.log_contains("dnsbl: broken.example query failed: SERVFAIL")


def test_naughty_mode_waits_at_connect_but_not_longer_than_the_timeout(dns_session, dns, elapsed):
    dns.drop_all()
    client, seconds = elapsed(start, dns_session, plugins=["dnsbl reject naughty"],
                              zones=["dead1.example", "dead2.example"])
    assert 0.8 < seconds < 2.5
    assert "naughty" not in notes(client)


def test_timeout_argument(dns_session, dns, elapsed):
    dns.drop_all()
    client = start(dns_session, plugins=["dnsbl timeout 0.3"], timeout=5)
    reply, seconds = elapsed(client.cmd, "RCPT TO:<user@example.org>")
    assert reply.code == 250 and seconds < 1.0


# -- odd configuration and input ----------------------------------------------------

def test_no_zones_no_lookups(dns_session, dns):
    client = start(dns_session, zones=["# none yet"])
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert dns.queries == []


def test_zone_lines_are_cleaned(dns_session, listed):
    client = start(dns_session, zones=["  BL.Example.  ", ":no zone"])
    assert client.cmd("RCPT TO:<user@example.org>").code == 550
    assert [q.name for q in listed.queries] == [f"{CLIENT}.bl.example"]


def test_client_without_an_address_is_skipped(dns_session, listed):
    client = start(dns_session, remote_ip="unknown")
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert client.log_contains("dnsbl: skip, not an IP address: 'unknown'")
    assert listed.queries == []


def test_odd_arguments_stop_the_start(make_app):
    from qpsmtpd.plugin import PluginError
    with pytest.raises(PluginError):
        make_app(["dnsbl reject 0 timeout"])


def test_with_the_naughty_plugin(dns_session, listed):
    """The sample configuration's pair: dnsbl defers, naughty refuses at RCPT;
    postmaster is still reachable."""
    import os
    from conftest import ROOT
    if not os.path.exists(os.path.join(ROOT, "plugins", "naughty.py")):
        pytest.skip("the naughty plugin is not there yet")
    client = start(dns_session, plugins=["dnsbl reject naughty reject_type disconnect",
                                         "naughty reject rcpt"])
    assert client.cmd("RCPT TO:<postmaster@example.org>").code == 250
    assert client.cmd("RCPT TO:<abuse@example.org>").code == 250
    reply = client.cmd("RCPT TO:<user@example.org>")
    assert reply == (550, ["5.7.1 (dnsbl) Listed in bl.example, see https://bl.example/"])
    assert client.closed()


def test_naughty_at_data_lets_mail_to_special_recipients_only(dns_session, listed):
    import os
    from conftest import ROOT
    if not os.path.exists(os.path.join(ROOT, "plugins", "naughty.py")):
        pytest.skip("the naughty plugin is not there yet")
    plugins = ["dnsbl reject naughty", "naughty reject data"]
    client = start(dns_session, plugins=plugins)
    assert client.cmd("RCPT TO:<postmaster@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: please delist me\r\n\r\nthanks\r\n.\r\n")
    assert client.reply().code == 250
    assert client.queued()[0].endswith(b"Subject: please delist me\n\nthanks\n")
    client = start(dns_session, plugins=plugins)
    assert client.cmd("RCPT TO:<postmaster@example.org>").code == 250
    assert client.cmd("RCPT TO:<user@example.org>").code == 250
    assert client.cmd("DATA").code == 554


def test_a_client_gone_before_rcpt_leaves_no_dns_socket_open(dns_session, listed):
    client = start(dns_session)
    pending = notes(client)["dnsbl_lookups"][1]
    assert pending._sockets                    # the queries went out at connect
    assert client.cmd("QUIT").code == 221
    client.close()                             # waits for the session's thread
    assert "dnsbl_lookups" not in notes(client)
    assert not pending._sockets                # closed at post-connection, not by gc
