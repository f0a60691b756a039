"""dmarc over real sessions with sender_permitted_from and dkim in front, all
through the real resolver to the test DNS server: alignment with SPF and
DKIM (relaxed and strict), the policy at the From domain and at its
organizational domain (Public Suffix List, offline), p/sp, pct with an
injected random source, quarantine, the reply the client sees (552 failed
DMARC policy), the Authentication-Results part that lands, reporting
addresses, and DNS failures and timeouts."""

import pytest

from qpsmtpd.plugin import PluginError

pytest_plugins = ["dns_fixtures", "mailauth_fixtures"]
pytest.register_assert_rewrite("dns_fixtures", "mailauth_fixtures")

from mailauth_fixtures import auth_results, sign, smtp_data  # noqa: E402

A_R = "mx.example.org; auth=none; "
SPF_PASS = "v=spf1 ip4:192.0.2.0/24 -all"


def message(author="Alice <alice@example.com>", extra=b""):
    return (f"From: {author}\nTo: bob@example.org\nSubject: hi\n"
            f"Date: Sat, 21 Nov 2026 00:00:00 +0000\nMessage-ID: <d1@example.com>\n"
            ).encode() + extra + b"\nhello\n"


def start(dns_session, dmarc="dmarc", **kwargs):
    return dns_session(["sender_permitted_from", "dkim", dmarc, "data_probe"], **kwargs)


def send(client, content, sender="alice@example.com", helo="EHLO client.example.net"):
    client.start_data(sender, ["bob@example.org"], helo)
    client.send(smtp_data(content))
    return client.reply()


def dmarc_notes(client):
    return client.session.connection.notes["data_probe"][-1]["notes"]


def plugin(client, name="dmarc"):
    return next(p for p in client.app.dispatcher.plugins if p.name == name)


# -- alignment ------------------------------------------------------------------------------

def test_aligned_spf_passes(dns_session, dns):
    dns.add("example.com", "TXT", SPF_PASS)
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    assert send(client, message()).code == 250
    assert auth_results(client.queued()[0]) == (
        f"{A_R}spf=pass smtp.mailfrom=example.com; dkim=none; "
        f"dmarc=pass (p=reject) header.from=example.com")
    assert client.log_contains("dmarc: pass, example.com aligned: spf")
    result = dmarc_notes(client)["dmarc_result"]
    assert (result["result"], result["policy"], result["disposition"], result["aligned"]) \
        == ("pass", "reject", "none", ["spf"])


def test_unaligned_spf_pass_is_refused_after_data(dns_session, dns):
    dns.add("lists.example.net", "TXT", SPF_PASS)
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    assert send(client, message(), sender="bounce@lists.example.net") == (
        552, ["5.7.1 failed DMARC policy"])
    assert client.queued() == []
    assert client.session.connection.notes["karma"] == 1 - 3     # SPF pass, DMARC fail
    assert client.log_contains("dmarc: fail, example.com, p=reject, not aligned")
    assert client.log_contains("(data_post) dmarc: fail")
    assert dmarc_notes(client)["reject_dmarc"] == "1"
    assert client.cmd("NOOP").code == 250                       # the session goes on


def test_aligned_dkim_passes_when_spf_fails(dns_session, dns, dkim_keys):
    dns.add("example.com", "TXT", "v=spf1 -all")
    dkim_keys.publish(dns, "example.com")
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    assert send(client, sign(message(), dkim_keys), sender="fwd@example.net").code == 250
    assert auth_results(client.queued()[0]).endswith(
        "dkim=pass header.i=@example.com header.s=sel2026; "
        "dmarc=pass (p=reject) header.from=example.com")
    assert dmarc_notes(client)["dmarc_result"]["aligned"] == ["dkim"]


def test_signature_of_another_domain_does_not_align(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.net")
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    signed = sign(message(), dkim_keys, domain="example.net")
    assert send(client, signed, sender="a@example.net").code == 552
    notes = dmarc_notes(client)
    assert notes["dkim_pass_domains"] == ["example.net"]
    assert notes["dmarc_result"]["aligned"] == []


@pytest.mark.parametrize("record, author, code", [
    ("v=DMARC1; p=reject", "alice@mail.example.com", 250),            # relaxed
    ("v=DMARC1; p=reject; aspf=s", "alice@mail.example.com", 552),    # strict
    ("v=DMARC1; p=reject; aspf=s", "alice@example.com", 250),
    ("v=DMARC1; p=reject; aspf=x", "alice@mail.example.com", 250),    # bad: relaxed
])
def test_spf_alignment_modes(dns_session, dns, record, author, code):
    dns.add("example.com", "TXT", SPF_PASS)
    dns.add("_dmarc.example.com", "TXT", record)
    dns.add("_dmarc.mail.example.com", "TXT", record)
    client = start(dns_session)
    assert send(client, message(author), sender="alice@example.com").code == code


@pytest.mark.parametrize("record, code", [
    ("v=DMARC1; p=reject", 250), ("v=DMARC1; p=reject; adkim=s", 552)])
def test_dkim_alignment_modes(dns_session, dns, dkim_keys, record, code):
    dkim_keys.publish(dns, "example.com")
    dns.add("_dmarc.mail.example.com", "TXT", record)
    client = start(dns_session)
    signed = sign(message("alice@mail.example.com"), dkim_keys, domain="example.com")
    assert send(client, signed, sender="x@example.net").code == code


def test_bounce_aligns_through_the_helo_identity(dns_session, dns):
    dns.add("client.example.net", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    dns.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    reply = send(client, message("MAILER-DAEMON@client.example.net"), sender="")
    assert reply.code == 250
    assert dmarc_notes(client)["dmarc_result"]["aligned"] == ["spf"]


# -- where the policy comes from --------------------------------------------------------------

def test_organizational_domain_policy_with_sp(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; sp=reject")
    client = start(dns_session)
    assert send(client, message("alice@mail.example.com"), sender="x@example.net") == (
        552, ["5.7.1 failed DMARC policy"])
    assert dns.asked("_dmarc.mail.example.com", "TXT")
    assert dns.asked("_dmarc.example.com", "TXT")
    result = dmarc_notes(client)["dmarc_result"]
    assert (result["org_domain"], result["record_domain"], result["policy"]) == (
        "example.com", "example.com", "reject")


def test_p_applies_to_the_organizational_domain_itself(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; sp=reject")
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert not dns.asked("_dmarc.com", "TXT")


def test_the_from_domains_own_record_wins(dns_session, dns):
    dns.add("_dmarc.mail.example.com", "TXT", "v=DMARC1; p=none")
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    assert send(client, message("alice@mail.example.com"), sender="x@example.net").code == 250
    assert auth_results(client.queued()[0]).endswith(
        "dmarc=fail (p=none) header.from=mail.example.com")
    assert client.log_contains("dmarc: fail, tolerated, mail.example.com, p=none, not aligned")


def test_public_suffix_list_finds_the_organizational_domain(dns_session, dns):
    client = start(dns_session)
    assert send(client, message("alice@a.b.example.co.uk"), sender="x@example.net").code == 250
    assert [q.name for q in dns.queries if q.name.startswith("_dmarc")] == [
        "_dmarc.a.b.example.co.uk", "_dmarc.example.co.uk"]


def test_config_public_suffix_list_replaces_the_bundled_one(dns_session, dns):
    client = start(dns_session, config={"public_suffix_list": ["com", "example.com"]})
    assert send(client, message("alice@mail.example.com"), sender="x@example.net").code == 250
    assert [q.name for q in dns.queries if q.name.startswith("_dmarc")] == [
        "_dmarc.mail.example.com"]


@pytest.mark.parametrize("records, result", [
    (["v=DMARC1; p=reject", "v=DMARC1; p=none"], "none"),         # two: no policy
    (["v=spf1 -all", "not dmarc"], "none"),
    (["v=DMARC1; p=bogus"], "none"),                               # invalid p, no rua
    (["v=DMARC1; p=bogus; rua=mailto:r@example.com"], "fail"),     # treated as p=none
    (["v=DMARC1; p=reject; sp=bogus; rua=mailto:r@example.com"], "fail"),
    (["v=DMARC2; p=reject"], "none"),
    (["p=reject; v=DMARC1"], "none"),                              # v= must come first
])
def test_odd_records(dns_session, dns, records, result):
    dns.add("_dmarc.example.com", "TXT", *records)
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert dmarc_notes(client)["dmarc_result"]["result"] == result


def test_no_policy(dns_session, dns):
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert auth_results(client.queued()[0]).endswith("dmarc=none header.from=example.com")
    assert client.log_contains("dmarc: skip, no policy for example.com")
    result = dmarc_notes(client)["dmarc_result"]
    assert (result["result"], result["policy"], result["reason"]) == ("none", None,
                                                                       "no policy")


# -- dispositions -----------------------------------------------------------------------------

def test_quarantine_adds_a_header(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine")
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    landed = client.queued()[0].split(b"\n")
    assert landed[2:5] == [landed[2], b"X-DMARC-Quarantine: example.com", landed[4]]
    assert client.session.connection.notes["karma"] == -3
    assert auth_results(client.queued()[0]).endswith(
        "dmarc=fail (p=quarantine) header.from=example.com")


def test_quarantine_reject(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine")
    client = start(dns_session, "dmarc quarantine reject")
    assert send(client, message(), sender="x@example.net").code == 552


@pytest.mark.parametrize("sample, code, shown", [
    (0.0, 552, "p=reject"), (0.49, 552, "p=reject"),
    (0.5, 250, "p=reject dis=quarantine"), (0.99, 250, "p=reject dis=quarantine")])
def test_pct_samples_with_the_injected_source(dns_session, dns, sample, code, shown):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; pct=50")
    client = start(dns_session)
    plugin(client).sample = lambda: sample
    reply = send(client, message(), sender="x@example.net")
    assert reply.code == code
    result = dmarc_notes(client)["dmarc_result"]
    assert result["pct"] == 50
    if code == 250:
        assert auth_results(client.queued()[0]).endswith(
            f"dmarc=fail ({shown}) header.from=example.com")
        assert result["disposition"] == "quarantine"
        assert client.log_contains("dmarc: fail, example.com, p=reject, sampled out "
                                   "(pct=50), quarantine")


def test_pct_0_of_quarantine_is_none(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine; pct=0")
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert b"X-DMARC-Quarantine" not in client.queued()[0]
    assert "karma" not in client.session.connection.notes


def test_p_none_is_annotated_only(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert "karma" not in client.session.connection.notes


@pytest.mark.parametrize("line, reply", [
    ("dmarc reject 0", (250, ["2.0.0 Queued! 0"])),
    ("dmarc reject_type temp", (452, ["4.7.1 failed DMARC policy"])),
])
def test_reject_settings(dns_session, dns, line, reply):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session, line)
    assert send(client, message(), sender="x@example.net") == reply


def test_reject_naughty_defers(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session, "dmarc reject naughty")
    assert send(client, message(), sender="x@example.net").code == 250
    assert client.session.connection.notes["naughty"] == ["(dmarc) failed DMARC policy"]


def test_several_from_domains_the_strictest_counts(dns_session, dns):
    dns.add("example.com", "TXT", SPF_PASS)
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    dns.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session)
    reply = send(client, message("alice@example.com, mallory@example.net"))
    assert reply.code == 552
    assert dmarc_notes(client)["dmarc_result"]["domain"] == "example.net"


def test_message_without_from(dns_session, dns):
    client = start(dns_session)
    assert send(client, b"Subject: no author\n\nbody\n").code == 250
    assert auth_results(client.queued()[0]).endswith("dmarc=permerror (no From domain)")
    assert not any(q.name.startswith("_dmarc") for q in dns.queries)


def test_relay_client_is_skipped(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session, relay_client=True)
    assert send(client, message(), sender="x@example.net").code == 250
    assert dns.queries == []
    assert client.log_contains("dmarc: skip, relay client")


def test_whitelisted_host_is_annotated_not_refused(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    client = start(dns_session, notes={"whitelisthost": "1"})
    assert send(client, message(), sender="x@example.net").code == 250
    assert auth_results(client.queued()[0]).endswith(
        "dmarc=fail (p=reject) header.from=example.com")


# -- reporting -----------------------------------------------------------------------------------

def test_reporting_addresses_are_logged_and_kept(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; "
            "rua=mailto:agg@example.com,mailto:agg2@example.net; ruf=mailto:f@example.com")
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert client.log_contains("dmarc: reporting addresses for example.com: "
                               "rua=mailto:agg@example.com,mailto:agg2@example.net, "
                               "ruf=mailto:f@example.com, no reports sent")
    result = dmarc_notes(client)["dmarc_result"]
    assert result["rua"] == ["mailto:agg@example.com", "mailto:agg2@example.net"]
    assert result["ruf"] == ["mailto:f@example.com"]


def test_reporting_0_logs_nothing(dns_session, dns):
    dns.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none; rua=mailto:agg@example.com")
    client = start(dns_session, "dmarc reporting 0")
    assert send(client, message(), sender="x@example.net").code == 250
    assert not client.log_contains("reporting addresses")


# -- DNS failures ----------------------------------------------------------------------------

def test_servfail_is_temperror_and_never_refuses(dns_session, dns):
    dns.servfail("_dmarc.example.com")
    client = start(dns_session)
    assert send(client, message(), sender="x@example.net").code == 250
    assert auth_results(client.queued()[0]).endswith(
        "dmarc=temperror header.from=example.com")
    assert client.log_contains("dmarc: skip, DNS error looking up the policy of "
                               "example.com: SERVFAIL")


def test_dead_server_costs_one_timeout_at_the_end_of_data(dns_session, dns, elapsed):
    dns.drop_all()
    client = dns_session(["dmarc"], timeout=1)
    client.start_data("x@example.net", ["bob@example.org"])
    reply, seconds = elapsed(lambda: (client.send(smtp_data(message())), client.reply())[1])
    assert reply.code == 250
    assert 0.9 < seconds < 1.5
    assert auth_results(client.queued()[0]) == (
        f"{A_R}dmarc=temperror header.from=example.com")


@pytest.mark.parametrize("args", ["reject 2", "quarantine drop", "reject"])
def test_bad_arguments_stop_the_start(make_app, args):
    with pytest.raises(PluginError):
        make_app([f"dmarc {args}"])
