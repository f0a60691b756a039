"""sender_permitted_from over real sessions, through the real resolver to the
test DNS server: every SPF result at every reject level (the MAIL reply the
client sees), the Received-SPF and Authentication-Results fields that land,
karma and notes, the HELO identity for bounces, pyspf's lookups going
through our resolver (cache, TCP, long records), and what a dead, slow or
failing DNS server costs."""

import pytest

from qpsmtpd.plugin import PluginError

pytest_plugins = ["dns_fixtures", "mailauth_fixtures"]
pytest.register_assert_rewrite("dns_fixtures", "mailauth_fixtures")

from mailauth_fixtures import auth_results, header_field  # noqa: E402

MESSAGE = ("From: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
SENDER = "alice@example.com"

RECORDS = {
    "pass": "v=spf1 ip4:192.0.2.0/24 -all",
    "fail": "v=spf1 ip4:198.51.100.0/24 -all",
    "softfail": "v=spf1 ~all",
    "neutral": "v=spf1 ?all",
    "none": None,
    "permerror": "v=spf1 ip4:192.0.2.0/24 bogus -all",
    "temperror": "SERVFAIL",
}

WHY = {
    "pass": "domain of example.com designates 192.0.2.10 as permitted sender",
    "fail": "domain of example.com does not designate 192.0.2.10 as permitted sender",
    "softfail": "domain of transitioning example.com does not designate 192.0.2.10 "
                "as permitted sender",
    "neutral": "192.0.2.10 is neither permitted nor denied by domain of example.com",
    "none": "domain of example.com does not designate permitted sender hosts",
    "permerror": "permanent error in processing domain of example.com: "
                 "Unknown mechanism found",
    "temperror": "temporary error in processing domain of example.com: "
                 "DNS SERVFAIL looking up example.com TXT",
}

# The reply to MAIL for each result and level, written out from the
# reference's table (qpsmtpd's sender_permitted_from), not from the plugin.
D550, D450, OK = 550, 450, 250
EXPECTED = {
    #             0   1   2     3     4     5     6
    "pass":      [OK, OK, OK,   OK,   OK,   OK,   OK],
    "fail":      [OK, OK, D450, D550, D550, D550, D550],
    "softfail":  [OK, OK, OK,   D450, D550, D550, D550],
    "neutral":   [OK, OK, OK,   OK,   OK,   D550, D550],
    "none":      [OK, OK, OK,   OK,   OK,   OK,   D550],
    "permerror": [OK, OK, OK,   OK,   D450, D450, D550],
    "temperror": [OK, OK, D450, D450, D450, D450, D450],
}
REPLY_TEXT = {
    ("fail", D450): "SPF - fail: ", ("fail", D550): "SPF - forgery: ",
    ("softfail", D450): "SPF - fail: ", ("softfail", D550): "SPF - fail: ",
    ("neutral", D550): "SPF - neutral: ", ("none", D550): "SPF - none: ",
    ("permerror", D450): "SPF - permerror: ", ("permerror", D550): "SPF - permerror: ",
    ("temperror", D450): "SPF - temperror: ",
}


def publish(dns, result, domain="example.com"):
    record = RECORDS[result]
    if record == "SERVFAIL":
        dns.servfail(domain)
    elif record is not None:
        dns.add(domain, "TXT", record)
    else:
        dns.add(domain, "MX", (10, "mx.example.com"))    # exists, no SPF


def start(dns_session, line="sender_permitted_from", *more, **kwargs):
    client = dns_session([line, *more], **kwargs)
    assert client.cmd("EHLO client.example.net").code == 250
    return client


def deliver(client, sender=SENDER):
    assert client.cmd(f"MAIL FROM:<{sender}>").code == 250
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    return client.queued()[-1]


def notes(client):
    return client.session.transaction.notes


# -- every result, every level ---------------------------------------------------------

@pytest.mark.parametrize("level", range(7))
@pytest.mark.parametrize("result", list(RECORDS))
def test_reply_for_each_result_and_level(dns_session, dns, result, level):
    publish(dns, result)
    client = start(dns_session, f"sender_permitted_from reject {level}")
    reply = client.cmd(f"MAIL FROM:<{SENDER}>")
    expected = EXPECTED[result][level]
    assert reply.code == expected
    if expected == OK:
        assert reply.text.startswith("2.1.0 <alice@example.com>, sender OK")
    else:
        esc = "5.7.1" if expected == D550 else "4.7.1"
        assert reply.lines == [f"{esc} {REPLY_TEXT[result, expected]}{WHY[result]}"]
    assert client.session.connection.notes.get("karma") == {
        "pass": 1, "fail": -1, "softfail": -1}.get(result)


@pytest.mark.parametrize("result", list(RECORDS))
def test_headers_that_land(dns_session, dns, result):
    publish(dns, result)
    client = start(dns_session, "sender_permitted_from reject 1")
    message = deliver(client)
    assert auth_results(message) == (
        f"mx.example.org; auth=none; spf={result} smtp.mailfrom=example.com")
    received_spf = header_field(message, "Received-SPF")
    assert received_spf.startswith(f"{result} (mx.example.org: {WHY[result]}) "
                                   f"client-ip=192.0.2.10; ")
    assert received_spf.endswith('envelope-from="alice@example.com"; '
                                 "helo=client.example.net; "
                                 + ("problem=\"Unknown mechanism found\"; "
                                    if result == "permerror" else "")
                                 + ("problem=\"DNS SERVFAIL looking up example.com "
                                    "TXT\"; " if result == "temperror" else "")
                                 + "receiver=mx.example.org; "
                                 + {"pass": 'mechanism="ip4:192.0.2.0/24"; ',
                                    "fail": "mechanism=-all; ",
                                    "softfail": "mechanism=~all; ",
                                    "neutral": "mechanism=?all; "}.get(result, "")
                                 + "identity=mailfrom")


def test_received_spf_is_on_top_and_folded(dns_session, dns):
    publish(dns, "pass")
    message = deliver(start(dns_session, "sender_permitted_from reject 3"))
    lines = message.split(b"\n")
    assert lines[0].startswith(b"Authentication-Results: ")
    assert lines[1].startswith(b"Received: ")
    assert lines[3:8] == [
        b"Received-SPF: pass (mx.example.org: domain of example.com designates",
        b" 192.0.2.10 as permitted sender) client-ip=192.0.2.10;",
        b' envelope-from="alice@example.com"; helo=client.example.net;',
        b' receiver=mx.example.org; mechanism="ip4:192.0.2.0/24"; identity=mailfrom',
        b"From: alice@example.com"]
    assert all(len(line) <= 78 for line in lines[3:7])


def test_pass_notes_and_log(dns_session, dns):
    publish(dns, "pass")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert notes(client)["spf_pass_host"] == "example.com"
    assert notes(client)["dmarc_spf"] == {"domain": "example.com", "scope": "mfrom",
                                          "result": "pass"}
    assert notes(client)["spfquery"].result == "pass"
    assert client.log_contains(f"(mail) sender_permitted_from: pass, {WHY['pass']}")


@pytest.mark.parametrize("level, logged", [
    (0, "skip, tolerated (fail: domain of example.com does not designate"),
    (1, "fail, tolerated, domain of example.com does not designate"),
    (3, "fail, domain of example.com does not designate"),
])
def test_fail_log_lines(dns_session, dns, level, logged):
    publish(dns, "fail")
    client = start(dns_session, f"sender_permitted_from reject {level}")
    client.cmd(f"MAIL FROM:<{SENDER}>")
    assert client.log_contains(f"sender_permitted_from: {logged}")
    assert "spf_pass_host" not in notes(client)


def test_domain_explanation_is_the_reply(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 -all exp=why.example.com")
    dns.add("why.example.com", "TXT", "%{i} does not send mail for %{d}")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == (
        550, ["5.7.1 SPF - forgery: 192.0.2.10 does not send mail for example.com"])


def test_explanation_with_control_characters_is_cleaned(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 -all exp=why.example.com")
    dns.add("why.example.com", "TXT", "bad\r\n250 fake")
    client = start(dns_session, "sender_permitted_from reject 3")
    reply = client.cmd(f"MAIL FROM:<{SENDER}>")
    assert reply.code == 550 and len(reply.lines) == 1


# -- configuration -----------------------------------------------------------------------

def test_spfbehavior_file_gives_the_level(dns_session, dns):
    publish(dns, "softfail")
    client = start(dns_session, config={"spfbehavior": "4"})
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 550


@pytest.mark.parametrize("line, code", [
    ("sender_permitted_from spf_deny 1", 450),     # reject 3: softfail deferred
    ("sender_permitted_from spf_deny 2", 550),     # reject 4
])
def test_legacy_spf_deny(dns_session, dns, line, code):
    publish(dns, "softfail")
    client = start(dns_session, line)
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == code


def test_no_level_only_annotates(dns_session, dns):
    publish(dns, "fail")
    client = start(dns_session)
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert client.log_contains("skip, tolerated (fail: ")


@pytest.mark.parametrize("args", ["reject 7", "reject x", "no_dmarc_policy 5", "reject"])
def test_bad_arguments_stop_the_start(make_app, args):
    with pytest.raises(PluginError):
        make_app([f"sender_permitted_from {args}"])


# -- identities -----------------------------------------------------------------------------

def test_null_sender_is_checked_with_the_helo_identity(dns_session, dns):
    dns.add("client.example.net", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    client = start(dns_session, "sender_permitted_from reject 3")
    message = deliver(client, sender="")
    assert dns.asked("client.example.net", "TXT")
    assert auth_results(message) == ("mx.example.org; auth=none; "
                                     "spf=pass smtp.helo=client.example.net")
    assert header_field(message, "Received-SPF") == (
        "pass (mx.example.org: domain of client.example.net designates 192.0.2.10 "
        "as permitted sender) client-ip=192.0.2.10; helo=client.example.net; "
        "receiver=mx.example.org; mechanism=\"ip4:192.0.2.10\"; identity=helo")


def test_bounce_from_a_host_that_may_not_send_is_refused(dns_session, dns):
    dns.add("client.example.net", "TXT", "v=spf1 -all")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd("MAIL FROM:<>") == (550, [
        "5.7.1 SPF - forgery: domain of client.example.net does not designate "
        "192.0.2.10 as permitted sender"])


@pytest.mark.parametrize("helo", ["EHLO [192.0.2.10]", "EHLO localhost"])
def test_null_sender_without_a_usable_helo_name_is_none(dns_session, dns, helo):
    client = dns_session(["sender_permitted_from reject 5"])
    assert client.cmd(helo).code == 250
    assert client.cmd("MAIL FROM:<>").code == 250
    assert dns.queries == []
    assert notes(client)["spfquery"].result == "none"
    assert client.session.transaction.auth_results == ["spf=none"]


def test_address_literal_sender_is_none_without_lookups(dns_session, dns):
    client = start(dns_session, "sender_permitted_from reject 5")
    assert client.cmd("MAIL FROM:<alice@[192.0.2.1]>").code == 250
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    assert client.reply().code == 250
    assert not any(q.rdtype == "TXT" for q in dns.queries)
    message = client.queued()[0]
    assert auth_results(message) == "mx.example.org; auth=none; spf=none"
    assert header_field(message, "Received-SPF") == (
        "none (mx.example.org: [192.0.2.1] is not a domain name) client-ip=192.0.2.10; "
        'envelope-from="alice@[192.0.2.1]"; helo=client.example.net; '
        "receiver=mx.example.org; identity=mailfrom")


def test_ipv6_client(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 ip6:2001:db8::/32 -all")
    client = start(dns_session, "sender_permitted_from reject 3", remote_ip="2001:db8::25")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert notes(client)["spfquery"].result == "pass"


def test_relay_client_is_not_checked(dns_session, dns):
    publish(dns, "fail")
    client = start(dns_session, "sender_permitted_from reject 3", relay_client=True)
    message = deliver(client)
    assert dns.queries == []
    assert b"Received-SPF" not in message
    assert client.log_contains("sender_permitted_from: skip, relay client")


# -- pyspf's lookups go through our resolver ------------------------------------------------------

def test_include_a_and_mx_mechanisms(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 include:_spf.example.net -all")
    dns.add("_spf.example.net", "TXT", "v=spf1 a:out.example.net mx -all")
    dns.add("out.example.net", "A", "198.51.100.7")
    dns.add("_spf.example.net", "MX", (20, "mx2.example.net"), (10, "mx1.example.net"))
    dns.add("mx1.example.net", "A", "198.51.100.8")
    dns.add("mx2.example.net", "A", "192.0.2.10")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert notes(client)["spfquery"].mechanism == "include:_spf.example.net"
    assert [q.name for q in dns.queries] == [
        "example.com", "_spf.example.net", "out.example.net", "_spf.example.net",
        "mx1.example.net", "mx2.example.net"]


def test_redirect(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 redirect=_spf.example.net")
    dns.add("_spf.example.net", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250


def test_long_record_in_several_strings(dns_session, dns):
    networks = " ".join(f"ip4:198.51.{n}.0/24" for n in range(40))
    record = f"v=spf1 {networks} ip4:192.0.2.10 -all"
    assert len(record) > 600
    dns.add("example.com", "TXT", record)      # split into 255-octet strings
    dns.add("example.com", "TXT", "some-other=record")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert notes(client)["spfquery"].result == "pass"


def test_truncated_answer_is_asked_again_over_tcp(dns_session, dns):
    publish(dns, "pass")
    dns.tcp_only("example.com")
    client = start(dns_session, "sender_permitted_from reject 3")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert ("example.com", "TXT", "tcp") in [tuple(q) for q in dns.queries]


def test_answers_are_cached_for_the_connection(dns_session, dns):
    publish(dns, "pass")
    client = start(dns_session, "sender_permitted_from reject 3")
    deliver(client)
    deliver(client)
    assert [q.name for q in dns.queries] == ["example.com"]
    assert client.queued()[1].count(b"Received-SPF") == 1


def test_two_spf_records_are_a_permerror(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 -all", "v=spf1 +all")
    client = start(dns_session, "sender_permitted_from reject 6")
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == (550, [
        "5.7.1 SPF - permerror: permanent error in processing domain of example.com: "
        "Two or more type TXT spf records found."])


def test_void_lookup_limit(dns_session, dns):
    dns.add("example.com", "TXT", "v=spf1 a:x1.example.net a:x2.example.net "
                                  "a:x3.example.net -all")
    client = start(dns_session, "sender_permitted_from reject 6")
    reply = client.cmd(f"MAIL FROM:<{SENDER}>")
    assert reply.code == 550
    assert "Void lookup limit of 2 exceeded" in reply.text


# -- a failing, slow or dead DNS server --------------------------------------------------------

def test_servfail_is_temperror_deferred_at_level_2(dns_session, dns):
    publish(dns, "temperror")
    client = start(dns_session, "sender_permitted_from reject 2")
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == (450, [
        f"4.7.1 SPF - temperror: {WHY['temperror']}"])
    assert client.log_contains("sender_permitted_from: fail, temperror, ")


def test_dead_server_costs_one_timeout(dns_session, dns, elapsed):
    dns.drop_all()
    client = start(dns_session, "sender_permitted_from reject 2", timeout=1)
    reply, seconds = elapsed(client.cmd, f"MAIL FROM:<{SENDER}>")
    assert reply == (450, ["4.7.1 SPF - temperror: temporary error in processing "
                           "domain of example.com: DNS timeout looking up "
                           "example.com TXT"])
    assert 0.9 < seconds < 1.5


def test_slow_server_the_whole_check_takes_one_timeout(dns_session, dns, elapsed):
    """Each answer takes 0.4 s; the chain needs five: the check gives up
    after the 1 s budget instead of taking 2 s."""
    chain = ["example.com", "a.example.net", "b.example.net", "c.example.net",
             "d.example.net"]
    for name, following in zip(chain, chain[1:]):
        dns.add(name, "TXT", f"v=spf1 include:{following} -all")
        dns.delay(name, 0.4)
    dns.add(chain[-1], "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns.delay(chain[-1], 0.4)
    client = start(dns_session, "sender_permitted_from reject 2", timeout=1)
    reply, seconds = elapsed(client.cmd, f"MAIL FROM:<{SENDER}>")
    assert reply.code == 450
    assert "SPF - temperror: " in reply.text
    assert 0.9 < seconds < 1.5


def test_timeout_argument(dns_session, dns, elapsed):
    dns.drop_all()
    client = start(dns_session, "sender_permitted_from reject 1 timeout 0.3", timeout=5)
    reply, seconds = elapsed(client.cmd, f"MAIL FROM:<{SENDER}>")
    assert reply.code == 250
    assert seconds < 0.8
    assert notes(client)["spfquery"].result == "temperror"


# -- no_dmarc_policy --------------------------------------------------------------------------

@pytest.mark.parametrize("result, setting, code", [
    ("fail", 1, 552), ("softfail", 1, 250), ("softfail", 2, 552), ("neutral", 2, 250),
    ("neutral", 3, 552), ("none", 3, 250), ("none", 4, 552), ("pass", 4, 250),
])
def test_no_dmarc_policy_refuses_after_data(dns_session, dns, result, setting, code):
    publish(dns, result)
    # example.com publishes no DMARC record
    client = start(dns_session, f"sender_permitted_from reject 1 no_dmarc_policy {setting}",
                   "dmarc")
    assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
    assert client.cmd("RCPT TO:<bob@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(MESSAGE)
    reply = client.reply()
    assert reply.code == code
    if code == 552:
        assert reply.lines == [f"5.7.1 SPF - {result}: {WHY[result]}"]


def test_no_dmarc_policy_does_nothing_when_there_is_a_policy(dns_session, dns):
    publish(dns, "fail")
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    client = start(dns_session, "sender_permitted_from reject 1 no_dmarc_policy 1", "dmarc")
    assert deliver(client)


def test_lookups_stay_ours_when_the_plugin_is_loaded_again(dns_session, dns):
    """A reload imports the plugin file again (a new App); sessions of the
    older App must still ask our resolver, never pyspf's own."""
    publish(dns, "pass")
    first = start(dns_session, "sender_permitted_from reject 3")
    second = start(dns_session, "sender_permitted_from reject 3")
    for client in (first, second):
        assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert notes(client)["spfquery"].result == "pass"
    assert [q.name for q in dns.queries] == ["example.com", "example.com"]
