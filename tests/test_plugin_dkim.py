"""dkim over real sessions and the test DNS server.

Signing: a relay client's message lands with a DKIM-Signature that dkimpy's
own verifier, Perl's Mail::DKIM and opendkim-testmsg all accept, and that
none of them accepts once the body or a signed header is changed; keys
from config/dkim/<domain>/, a parent domain's key, a symlinked alias; what
happens without a usable key. Verifying: each result (pass, fail,
permerror, temperror, none) as the Authentication-Results part that lands,
the log line, karma and notes; key lookups started at the end of the header
so a dead DNS server costs one timeout at most; reject 1 at data_post."""

import os
import subprocess
import sys
import time

import dkim
import pytest

from qpsmtpd.dns import Resolver
from qpsmtpd.plugin import PluginError

pytest_plugins = ["dns_fixtures", "mailauth_fixtures"]
pytest.register_assert_rewrite("dns_fixtures", "mailauth_fixtures")

from mailauth_fixtures import (  # noqa: E402
    KEY_GEN, SELECTOR, auth_results, header_field, mail_dkim_available, mail_dkim_verify,
    opendkim_verify, sign, smtp_data)

KEY_NAME = f"{SELECTOR}._domainkey.example.com"
OUTGOING = (b"From: Alice <alice@example.com>\n"
            b"To: bob@example.org\n"
            b"Subject: the quarterly numbers\n"
            b"Date: Sat, 21 Nov 2026 00:00:00 +0000\n"
            b"Message-ID: <n1@example.com>\n"
            b"\n"
            b"Hello Bob,\n"
            b"  the numbers are   attached.\t \n"
            b".a line with a leading dot\n"
            b"\n\n")
INCOMING = (b"From: Carol <carol@example.com>\n"
            b"To: bob@example.org\n"
            b"Subject: hello\n"
            b"Date: Sat, 21 Nov 2026 00:00:00 +0000\n"
            b"Message-ID: <m1@example.com>\n"
            b"\n"
            b"see you\n")
A_R = "mx.example.org; auth=none; "


@pytest.fixture
def key_config(dkim_keys):
    """config files: the example.com key in config/dkim/example.com/."""
    return {"dkim/example.com/selector": f"{SELECTOR}\n",
            "dkim/example.com/private": dkim_keys.private}


def send(client, message, sender="alice@example.com", helo="EHLO client.example.net"):
    client.start_data(sender, ["bob@example.org"], helo)
    client.send(smtp_data(message))
    return client.reply()


def landed(client):
    return client.queued()[-1]


def dkimpy_verify(message, dns):
    """dkimpy's verifier, the key fetched from the test DNS server."""
    resolver = Resolver([("127.0.0.1", dns.port)], timeout=2)

    def dnsfunc(name, timeout=5):
        answer = resolver.lookup(name.decode().rstrip("."), "TXT")
        return answer[0].encode() if answer else None

    return dkim.verify(message.replace(b"\n", b"\r\n"), dnsfunc=dnsfunc)


def tamper_body(message):
    return message.replace(b"the numbers are", b"the numbers were")


def tamper_header(message):
    return message.replace(b"Subject: the quarterly numbers", b"Subject: the yearly numbers")


# -- signing ------------------------------------------------------------------------------

@pytest.fixture
def signed(dns_session, dns, dkim_keys, key_config):
    """A relay client's message as it landed, its key published."""
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"], key_config, relay_client=True)
    assert send(client, OUTGOING).code == 250
    assert client.log_contains(
        f"dkim: pass, we signed the message (d=example.com, s={SELECTOR})")
    return landed(client)


def test_signature_lands_on_top_of_the_original_header(signed):
    lines = signed.split(b"\n")
    assert lines[0].startswith(b"Authentication-Results: mx.example.org; auth=none")
    assert lines[1].startswith(b"Received: ")
    assert lines[3].startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; "
                               b"d=example.com;")
    signature = header_field(signed, "DKIM-Signature")
    assert f"s={SELECTOR};" in signature
    assert "h=from : to : subject : date : message-id : from;" in signature
    assert signed.split(b"\n\n", 1)[1] == OUTGOING.split(b"\n\n", 1)[1]
    assert b"dkim=" not in lines[0]       # outgoing mail is not verified


def test_signature_verifies_with_dkimpy(signed, dns):
    assert dkimpy_verify(signed, dns)
    assert not dkimpy_verify(tamper_body(signed), dns)
    assert not dkimpy_verify(tamper_header(signed), dns)


def test_signature_verifies_with_perl_mail_dkim(signed, dns):
    if not mail_dkim_available():
        pytest.skip("Perl Mail::DKIM and Net::DNS are not installed "
                    "(Debian libmail-dkim-perl)")
    assert mail_dkim_verify(signed, dns) == ("pass", "pass")
    assert mail_dkim_verify(tamper_body(signed), dns) == (
        "fail", "fail (body has been altered)")
    assert mail_dkim_verify(tamper_header(signed), dns) == (
        "fail", "fail (message has been altered)")
    assert dns.asked(KEY_NAME, "TXT")


def test_signature_verifies_with_opendkim(dns_session, dns, dkim_keys, key_config,
                                          opendkim_server):
    opendkim_server.reset()
    dkim_keys.publish(opendkim_server, "example.com")
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"], key_config, relay_client=True)
    assert send(client, OUTGOING).code == 250
    message = landed(client)
    assert opendkim_verify(message, opendkim_server) == (0, "")
    assert opendkim_server.asked(KEY_NAME, "TXT")
    status, error = opendkim_verify(tamper_body(message), opendkim_server)
    assert status != 0 and "Bad signature" in error
    status, error = opendkim_verify(tamper_header(message), opendkim_server)
    assert status != 0 and "Bad signature" in error


def test_our_signature_passes_our_verifier(signed, dns_session, dns):
    """What we sign for one host, we accept on another (the key in DNS)."""
    raw = signed.split(b"\n", 3)[3]          # without our A-R and Received
    client = dns_session(["dkim"])
    assert send(client, raw, sender="alice@example.com").code == 250
    assert auth_results(landed(client)) == (
        A_R + f"dkim=pass header.i=@example.com header.s={SELECTOR}")


def test_subdomain_is_signed_with_the_parent_key(dns_session, dns, dkim_keys, key_config):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"], key_config, relay_client=True)
    message = OUTGOING.replace(b"alice@example.com", b"alice@mail.sales.example.com")
    assert send(client, message).code == 250
    assert "d=example.com;" in header_field(landed(client), "DKIM-Signature")
    assert client.log_contains("dkim: info, using example.com key for mail.sales.example.com")
    assert dkimpy_verify(landed(client), dns)


def test_symlinked_domain_signs_with_its_target(dns_session, dns, dkim_keys, key_config,
                                                tmp_path):
    os.makedirs(tmp_path / "config" / "dkim", exist_ok=True)
    os.symlink("example.com", tmp_path / "config" / "dkim" / "client.example")
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"], key_config, relay_client=True)
    message = OUTGOING.replace(b"alice@example.com", b"alice@client.example")
    assert send(client, message, sender="alice@client.example").code == 250
    assert "d=example.com;" in header_field(landed(client), "DKIM-Signature")
    assert dkimpy_verify(landed(client), dns)


def test_envelope_domain_when_the_from_domain_has_no_key(dns_session, dns, dkim_keys,
                                                         key_config):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"], key_config, relay_client=True)
    message = OUTGOING.replace(b"alice@example.com", b"alice@elsewhere.example")
    assert send(client, message, sender="alice@example.com").code == 250
    assert "d=example.com;" in header_field(landed(client), "DKIM-Signature")


def test_key_dir_argument(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    client = dns_session([f"dkim key_dir {dkim_keys.dir}"], relay_client=True)
    assert send(client, OUTGOING).code == 250
    assert dkimpy_verify(landed(client), dns)


@pytest.mark.parametrize("files, logged", [
    ({}, "dkim: skip, DKIM not configured for example.com"),
    ({"dkim/example.com/private": b"not a key\n", "dkim/example.com/selector": "s1"},
     "dkim: error, cannot sign for example.com with "),
    ({"dkim/example.com/selector": "s1"},
     "dkim: error, unable to read dkim key from "),
    ({"dkim/example.com/private": b"x"}, "dkim: error, unable to read selector from "),
    ({"dkim/example.com/private": b"x", "dkim/example.com/selector": "a b\n"},
     "dkim: error, invalid selector 'a b' in "),
])
def test_without_a_usable_key_the_message_goes_out_unsigned(dns_session, files, logged):
    client = dns_session(["dkim"], files, relay_client=True)
    assert send(client, OUTGOING).code == 250
    assert b"DKIM-Signature" not in landed(client)
    assert client.log_contains(logged)


@pytest.mark.parametrize("author", [b"alice@../../etc", b"alice@example.com/../x",
                                    b"undisclosed-recipients:;"])
def test_odd_from_domains_find_no_key(dns_session, key_config, author):
    client = dns_session(["dkim"], key_config, relay_client=True)
    message = OUTGOING.replace(b"Alice <alice@example.com>", author)
    assert send(client, message, sender="alice@other.example").code == 250
    assert b"DKIM-Signature" not in landed(client)


def test_message_without_from_is_not_signed(dns_session, key_config):
    client = dns_session(["dkim"], key_config, relay_client=True)
    assert send(client, b"Subject: no author\n\nbody\n").code == 250
    assert client.log_contains("dkim: skip, no From header, message not signed")


def test_sign_max_size(dns_session, key_config):
    client = dns_session(["dkim sign_max_size 100"], key_config, relay_client=True)
    assert send(client, OUTGOING).code == 250
    assert b"DKIM-Signature" not in landed(client)
    assert client.log_contains("dkim: skip, message too large to sign")


# -- verifying -----------------------------------------------------------------------------

def test_valid_signature_passes(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"])
    assert send(client, sign(INCOMING, dkim_keys), sender="carol@example.com").code == 250
    message = landed(client)
    assert message.split(b"\n")[:4] == [
        f"Authentication-Results: {A_R}dkim=pass header.i=@example.com "
        f"header.s={SELECTOR}".encode(),
        message.split(b"\n")[1],
        message.split(b"\n")[2],
        f"X-DKIM-Authentication: domain: example.com, selector: {SELECTOR}, "
        f"result: pass".encode()]
    assert client.session.connection.notes["karma"] == 1
    assert client.log_contains(f"dkim: pass, valid signature (domain: example.com, "
                               f"selector: {SELECTOR})")


def test_notes_for_dmarc(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim", "data_probe"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    notes = client.session.connection.notes["data_probe"][-1]["notes"]
    assert notes["dkim_result"] == "pass"
    assert notes["dkim_pass_domains"] == ["example.com"]
    assert [tuple(s) for s in notes["dkim_verifier"]] == [
        ("pass", "example.com", SELECTOR, "@example.com", "")]


@pytest.mark.parametrize("change, result", [
    (lambda m: m.replace(b"see you", b"see you soon"), "fail (body hash mismatch)"),
    (lambda m: m.replace(b"Subject: hello", b"Subject: hullo"),
     "fail (signature did not verify)"),
])
def test_altered_message_fails(dns_session, dns, dkim_keys, change, result):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim"])
    assert send(client, change(sign(INCOMING, dkim_keys))).code == 250
    assert auth_results(landed(client)) == (
        f"{A_R}dkim={result} header.i=@example.com header.s={SELECTOR}")
    assert b"X-DKIM-Authentication" not in landed(client)
    assert client.session.connection.notes["karma"] == -1
    reason = result[result.index("(") + 1:-1]
    assert client.log_contains(f"dkim: fail, tolerated, {reason} (domain: example.com, "
                               f"selector: {SELECTOR})")


def test_missing_key_is_permerror(dns_session, dns, dkim_keys):
    client = dns_session(["dkim"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert auth_results(landed(client)) == (
        f"{A_R}dkim=permerror (no key for signature) header.i=@example.com "
        f"header.s={SELECTOR}")
    assert dns.asked(KEY_NAME, "TXT")


def test_bad_key_record_is_permerror(dns_session, dns, dkim_keys):
    dns.add(KEY_NAME, "TXT", "v=DKIM1; k=rsa; p=bm90IGEga2V5")
    client = dns_session(["dkim"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert auth_results(landed(client)).startswith(f"{A_R}dkim=permerror (")


def test_malformed_signature_is_permerror_without_lookup(dns_session, dns, dkim_keys):
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel2026; h=from\n"
    client = dns_session(["dkim"])
    assert send(client, broken + INCOMING).code == 250
    assert auth_results(landed(client)) == (
        f"{A_R}dkim=permerror (malformed signature: missing b, bh=) "
        f"header.i=@example.com header.s={SELECTOR}")
    assert dns.queries == []


def test_garbage_in_the_signature_stays_out_of_the_header(dns_session, dns, dkim_keys):
    broken = b"DKIM-Signature: v=1; d=ex(ample).com; s=a b; i=x;y; h=from; b=; bh=\n"
    client = dns_session(["dkim"])
    assert send(client, broken + INCOMING).code == 250
    result = auth_results(landed(client))
    assert result.startswith(f"{A_R}dkim=permerror")
    assert "(ample)" not in result and "header.s=" not in result


def test_several_signatures_one_part_each(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    good = sign(INCOMING, dkim_keys)
    both = sign(good, dkim_keys, domain="example.net", selector="other")
    client = dns_session(["dkim"])
    assert send(client, both).code == 250
    assert auth_results(landed(client)) == (
        f"{A_R}dkim=permerror (no key for signature) header.i=@example.net header.s=other; "
        f"dkim=pass header.i=@example.com header.s={SELECTOR}")
    assert client.session.connection.notes["karma"] == 1


def test_fields_added_by_our_plugins_do_not_break_a_signature(dns_session, dns, dkim_keys):
    """The sender signed "no Received-SPF" (an absent field in h=); the
    SPF plugin adds one before dkim runs: the signature is checked against
    the header as it arrived."""
    dkim_keys.publish(dns, "example.com")
    dns.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    signed = sign(INCOMING, dkim_keys, include_headers=[b"from", b"subject", b"received-spf"])
    client = dns_session(["sender_permitted_from", "dkim"])
    assert send(client, signed, sender="carol@example.com").code == 250
    message = landed(client)
    assert b"\nReceived-SPF: pass" in message
    assert auth_results(message).endswith(
        f"dkim=pass header.i=@example.com header.s={SELECTOR}")


def test_unsigned_message_is_none(dns_session, dns):
    client = dns_session(["dkim"])
    assert send(client, INCOMING).code == 250
    assert auth_results(landed(client)) == f"{A_R}dkim=none"
    assert client.log_contains("dkim: skip, no signature")
    assert dns.queries == []


def test_message_above_max_size_is_not_verified(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim max_size 200"])
    assert send(client, sign(INCOMING + b"x" * 300 + b"\n", dkim_keys)).code == 250
    assert auth_results(landed(client)) == f"{A_R}dkim=none (message too large)"
    assert client.log_contains("dkim: skip, message too large (")


def test_key_over_tcp(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    dns.tcp_only(KEY_NAME)
    client = dns_session(["dkim"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert "dkim=pass" in auth_results(landed(client))


def test_whitelisted_host_is_skipped(dns_session, dns, dkim_keys):
    client = dns_session(["dkim"], notes={"whitelisthost": "1"})
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert "dkim=" not in auth_results(landed(client))
    assert client.log_contains("dkim: skip, whitelisted host")


# -- DNS failures and time ---------------------------------------------------------------------

def test_servfail_is_temperror(dns_session, dns, dkim_keys):
    dns.servfail(KEY_NAME)
    client = dns_session(["dkim"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert auth_results(landed(client)) == (
        f"{A_R}dkim=temperror (key lookup failed: SERVFAIL) header.i=@example.com "
        f"header.s={SELECTOR}")
    assert "karma" not in client.session.connection.notes
    assert client.log_contains("dkim: fail, tolerated, temperror, key lookup failed: "
                               "SERVFAIL")


def test_dead_server_costs_at_most_one_timeout(dns_session, dns, dkim_keys, elapsed):
    dns.drop_all()
    client = dns_session(["dkim"], timeout=1)
    client.start_data("carol@example.com", ["bob@example.org"])
    reply, seconds = elapsed(lambda: (client.send(smtp_data(sign(INCOMING, dkim_keys))),
                                      client.reply())[1])
    assert reply.code == 250
    assert 0.9 < seconds < 1.5
    assert "dkim=temperror (key lookup failed: timeout)" in auth_results(landed(client))


def test_key_lookup_runs_while_the_body_arrives(dns_session, dns, dkim_keys, elapsed):
    """The lookup starts when the header is complete: a key that takes
    0.8 s to come is there by the time a slow body has arrived."""
    dkim_keys.publish(dns, "example.com")
    dns.delay(KEY_NAME, 0.8)
    client = dns_session(["dkim"], timeout=2)
    client.start_data("carol@example.com", ["bob@example.org"])
    head, body = smtp_data(sign(INCOMING, dkim_keys)).split(b"\r\n\r\n", 1)
    client.send(head + b"\r\n\r\n")
    time.sleep(1.0)
    reply, seconds = elapsed(lambda: (client.send(body), client.reply())[1])
    assert reply.code == 250
    assert seconds < 0.5
    assert "dkim=pass" in auth_results(landed(client))


# -- reject ------------------------------------------------------------------------------------

def test_reject_1_refuses_a_failed_signature(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim reject 1"])
    altered = sign(INCOMING, dkim_keys).replace(b"see you", b"buy now")
    assert send(client, altered) == (552, ["5.7.1 DKIM signature invalid: body hash mismatch"])
    assert client.queued() == []
    assert client.log_contains("dkim: fail, body hash mismatch (domain: example.com")


def test_reject_1_defers_a_temperror(dns_session, dns, dkim_keys):
    dns.servfail(KEY_NAME)
    client = dns_session(["dkim reject 1"])
    assert send(client, sign(INCOMING, dkim_keys)) == (
        452, ["4.7.1 Please try again later - key lookup failed: SERVFAIL"])


def test_reject_1_lets_a_pass_and_an_unsigned_message_through(dns_session, dns, dkim_keys):
    dkim_keys.publish(dns, "example.com")
    client = dns_session(["dkim reject 1"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert send(client, INCOMING, helo=None).code == 250


def test_reject_naughty_defers(dns_session, dns, dkim_keys):
    client = dns_session(["dkim reject naughty"])
    assert send(client, sign(INCOMING, dkim_keys)).code == 250
    assert client.session.connection.notes["naughty"] == [
        "(dkim) DKIM signature invalid: no key for signature"]


@pytest.mark.parametrize("args", ["reject 2", "max_size big", "sign_max_size -1", "reject"])
def test_bad_arguments_stop_the_start(make_app, args):
    with pytest.raises(PluginError):
        make_app([f"dkim {args}"])


# -- plugins/dkim_key_gen -------------------------------------------------------------------------

def run_key_gen(*args):
    return subprocess.run([sys.executable, KEY_GEN, *args], capture_output=True, text=True)


def test_key_gen_files_and_modes(dkim_keys):
    folder = os.path.join(dkim_keys.dir, "example.com")
    assert sorted(os.listdir(folder)) == ["dns", "private", "public", "selector"]
    assert os.stat(os.path.join(folder, "private")).st_mode & 0o777 == 0o400
    with open(os.path.join(folder, "selector")) as handle:
        assert handle.read() == f"{SELECTOR}\n"
    with open(os.path.join(folder, "dns")) as handle:
        assert f'{SELECTOR}._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; "' in handle.read()


@pytest.mark.parametrize("args, message", [
    (["../etc"], "not a domain name"),
    (["--selector", "a b", "example.net"], "not a valid selector"),
    (["--bits", "512", "example.net"], "shorter than 1024 bits"),
    (["--user", "no-such-user-here", "example.net"], "no such user"),
])
def test_key_gen_refuses_bad_input(tmp_path, args, message):
    run = run_key_gen("--dir", str(tmp_path), *args)
    assert run.returncode == 2
    assert message in run.stderr
    assert os.listdir(tmp_path) == []


def test_key_gen_keeps_an_existing_key(dkim_keys):
    before = dkim_keys.private
    run = run_key_gen("--dir", dkim_keys.dir, "example.com")
    assert run.returncode == 1
    assert "exists; use --force" in run.stderr
    with open(os.path.join(dkim_keys.dir, "example.com", "private"), "rb") as handle:
        assert handle.read() == before
