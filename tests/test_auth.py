"""SMTP AUTH in the engine (qpsmtpd/auth.py): the EHLO keyword, PLAIN, LOGIN
and CRAM-MD5 exchanges, every refusal, the hooks' results, the relay right,
Received and Authentication-Results, the log, and the password checks auth
plugins share. Sessions run over a real socketpair with auth/auth_flat_file
(and test plugins) in clear: no TLS plugin is loaded here (test_tls.py
covers tls_before_auth)."""

import os
import re
import time

import pytest

from conftest import TEST_PLUGINS, PLUGIN_DIR
from qpsmtpd import auth
from qpsmtpd.constants import DECLINED, DENY, OK
from tls_fixtures import b64, cram_md5

ACCOUNTS = ["good@example.com:good_pass", "bad@example.com:bad_pass"]
BASE = {"flat_auth_pw": ACCOUNTS, "rcpthosts": "example.test",
        "auth_failure_delay": "0"}
GOOD_PLAIN = b64("\0good@example.com\0good_pass")


@pytest.fixture
def queue_dir(tmp_path):
    return tmp_path / "queue"


@pytest.fixture
def session(plugin_session, queue_dir):
    """Factory: a session with auth_flat_file, rcpt_ok and a capturing queue;
    EHLO already said unless ``ehlo`` is None."""
    def factory(plugins=("auth/auth_flat_file",), config=None, ehlo="client.example.net",
                **kwargs):
        files = dict(BASE)
        files.update(config or {})
        files = {name: value for name, value in files.items() if value is not None}
        client = plugin_session(list(plugins) + ["rcpt_ok", f"capture {queue_dir}"],
                                files, **kwargs)
        assert client.greeting.code == 220
        if ehlo:
            client.ehlo = client.cmd(f"EHLO {ehlo}")
            assert client.ehlo.code == 250
        return client
    return factory


def queued(queue_dir):
    return [(queue_dir / name).read_bytes()
            for name in sorted(os.listdir(queue_dir)) if name.endswith(".eml")]


def send_mail(client, recipient="rcpt@elsewhere.example"):
    assert client.cmd("MAIL FROM:<good@example.com>").code == 250
    assert client.cmd(f"RCPT TO:<{recipient}>").code == 250
    assert client.cmd("DATA").code == 354
    client.send("Subject: hi\r\n\r\nbody\r\n.\r\n")
    return client.reply()


# -- the EHLO keyword and the verb -------------------------------------------------

def test_ehlo_advertises_mechanisms_in_fixed_order(session):
    client = session()
    assert client.ehlo.lines[-1] == "AUTH PLAIN LOGIN CRAM-MD5"


@pytest.mark.parametrize("hooks, line", [
    (["returns auth-login DECLINED"], "AUTH LOGIN"),
    (["returns auth-cram-md5 DECLINED", "returns auth-plain DECLINED"],
     "AUTH PLAIN CRAM-MD5"),
    (["auth/authdeny"], "AUTH PLAIN LOGIN CRAM-MD5"),
])
def test_mechanisms_follow_the_registered_hooks(session, hooks, line):
    client = session(plugins=hooks)
    assert client.ehlo.lines[-1] == line


def test_without_auth_plugins_auth_is_neither_offered_nor_known(session):
    client = session(plugins=[])
    assert not any(line.startswith("AUTH") for line in client.ehlo.lines)
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == (500, ["5.5.1 Unrecognized command"])


def test_auth_before_ehlo_is_an_unknown_command(session):
    client = session(ehlo=None)
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == (500, ["Unrecognized command"])


def test_auth_after_helo_is_refused(session):
    client = session()
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == (503, ["AUTH not defined for HELO"])


# -- PLAIN -------------------------------------------------------------------------

def test_plain_with_initial_response_makes_a_relay_client(session):
    client = session()
    assert client.cmd("MAIL FROM:<good@example.com>").code == 250
    assert client.cmd("RCPT TO:<rcpt@elsewhere.example>").code == 550
    assert client.cmd("RSET").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == \
        (235, ["2.7.0 PLAIN authentication successful for good@example.com "
               "- auth_flat_file"])
    connection = client.session.connection
    assert (connection.relay_client, connection.auth_user, connection.auth_mechanism) \
        == (True, "good@example.com", "plain")
    assert send_mail(client).code == 250


def test_plain_prompts_with_an_empty_challenge(session):
    client = session()
    client.send("AUTH PLAIN\r\n")
    client.sock.settimeout(5)
    assert client.file.readline() == b"334 \r\n"
    assert client.cmd(GOOD_PLAIN).code == 235


def test_plain_with_matching_authorization_identity(session):
    client = session()
    reply = client.cmd("AUTH PLAIN " + b64("good@example.com\0good@example.com\0good_pass"))
    assert reply.code == 235


@pytest.mark.parametrize("response, text", [
    (b64("good@example.com\0good_pass"), "5.7.8 Authentication invalid"),
    (b64("\0\0good_pass"), "5.7.8 Authentication invalid"),
    (b64("admin\0\0good_pass"), "5.7.8 Authentication invalid (admin)"),
    (b64("admin@example.com\0good@example.com\0good_pass"),
     "5.7.8 Authentication invalid for good@example.com"),
    (b64("\0good@example.com\0"), "5.7.8 Authentication invalid"),
    (b64("\0good@example.com\0good_pass\0extra"), "5.7.8 Authentication invalid"),
    (b64("\0good\r\n250 fake@example.com\0good_pass"), "5.7.8 Authentication invalid"),
    ("=", "5.7.8 Authentication invalid"),
])
def test_malformed_plain_responses_get_535(session, response, text):
    client = session()
    assert client.cmd(f"AUTH PLAIN {response}") == (535, [text])
    assert not client.session.connection.relay_client
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


# -- LOGIN and CRAM-MD5 -----------------------------------------------------------

def test_login_with_prompts(session):
    client = session()
    assert client.cmd("AUTH LOGIN") == (334, ["VXNlcm5hbWU6"])
    assert client.cmd(b64("good@example.com")) == (334, ["UGFzc3dvcmQ6"])
    assert client.cmd(b64("good_pass")) == \
        (235, ["2.7.0 LOGIN authentication successful for good@example.com "
               "- auth_flat_file"])
    assert client.session.connection.auth_mechanism == "login"


def test_login_with_the_user_as_initial_response(session):
    client = session()
    assert client.cmd("AUTH LOGIN " + b64("good@example.com")) == (334, ["UGFzc3dvcmQ6"])
    assert client.cmd(b64("good_pass")).code == 235


def test_cram_md5(session):
    client = session()
    challenge = client.cmd("AUTH CRAM-MD5")
    assert challenge.code == 334
    ticket = __import__("base64").b64decode(challenge.lines[0]).decode()
    assert re.fullmatch(r"<[0-9a-f]+\.[0-9a-f]+@mx\.example\.org>", ticket)
    assert client.cmd(cram_md5(challenge.lines[0], "good@example.com", "good_pass")) == \
        (235, ["2.7.0 CRAM-MD5 authentication successful for good@example.com "
               "- auth_flat_file"])


def test_cram_md5_challenges_differ(session):
    client = session()
    first = client.cmd("AUTH CRAM-MD5").lines[0]
    assert client.cmd("*").code == 501
    assert client.cmd("AUTH CRAM-MD5").lines[0] != first


def test_cram_md5_wrong_digest_and_malformed_answers(session):
    client = session()
    challenge = client.cmd("AUTH CRAM-MD5").lines[0]
    assert client.cmd(cram_md5(challenge, "good@example.com", "bad")).code == 535
    client.cmd("AUTH CRAM-MD5")
    assert client.cmd(b64("good@example.com")) == \
        (504, ["5.5.4 Invalid authentication string"])
    assert client.cmd("AUTH CRAM-MD5 " + b64("x y")) == \
        (501, ["5.5.2 CRAM-MD5 takes no initial response"])


# -- cancel, malformed base64, limits ----------------------------------------------

@pytest.mark.parametrize("opening, answers", [
    ("AUTH PLAIN", ["*"]),
    ("AUTH LOGIN", ["*"]),
    ("AUTH LOGIN", [b64("good@example.com"), "*"]),
    ("AUTH CRAM-MD5", ["*"]),
])
def test_star_cancels_with_501(session, opening, answers):
    client = session()
    reply = client.cmd(opening)
    for answer in answers:
        assert reply.code == 334
        reply = client.cmd(answer)
    assert reply == (501, ["5.7.0 Authentication canceled"])
    assert client.cmd("NOOP").code == 250
    assert client.session.connection.auth_user is None


def test_star_as_initial_response_cancels(session):
    client = session()
    assert client.cmd("AUTH PLAIN *") == (501, ["5.7.0 Authentication canceled"])


@pytest.mark.parametrize("opening, answer", [
    ("AUTH PLAIN not*base64", None),
    ("AUTH PLAIN AGdvb2Q", None),            # missing padding
    ("AUTH PLAIN", "%%%%"),
    ("AUTH LOGIN", "Z29vZA=x"),
    ("AUTH LOGIN " + b64("good@example.com"), "!!"),
    ("AUTH CRAM-MD5", "bad base64 here"),
])
def test_malformed_base64_gets_501(session, opening, answer):
    client = session()
    reply = client.cmd(opening)
    if answer is not None:
        assert reply.code == 334
        reply = client.cmd(answer)
    assert reply == (501, ["5.5.2 Cannot Base64-decode Client responses"])
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


@pytest.mark.parametrize("line, reply", [
    ("AUTH", (501, ["5.5.2 Syntax error in command"])),
    ("AUTH PLAIN a b", (501, ["5.5.2 Syntax error in command"])),
    ("AUTH DIGEST-MD5", (504, ["5.5.4 Unimplemented authentication mechanism: digest-md5"])),
    ("AUTH XOAUTH2 abc", (504, ["5.5.4 Unimplemented authentication mechanism: xoauth2"])),
])
def test_syntax_and_unknown_mechanisms(session, line, reply):
    client = session()
    assert client.cmd(line) == reply


def test_mechanism_without_a_hook_is_not_accepted(session):
    client = session(plugins=["returns auth-login OK"])
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == \
        (504, ["5.5.4 Unimplemented authentication mechanism: plain"])


def test_overlong_response_line(session):
    client = session()
    assert client.cmd("AUTH LOGIN").code == 334
    assert client.cmd("A" * 20000) == (500, ["5.5.6 Authentication Exchange line is too long"])
    assert client.cmd("NOOP").code == 250


# -- sequence -----------------------------------------------------------------------

def test_second_auth_gets_503(session):
    client = session()
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == \
        (503, ["5.5.1 but you already said AUTH ..."])
    assert client.cmd("AUTH LOGIN") == (503, ["5.5.1 but you already said AUTH ..."])


def test_auth_inside_a_transaction_gets_503(session):
    client = session()
    assert client.cmd("MAIL FROM:<good@example.com>").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}") == \
        (503, ["5.5.1 AUTH not permitted during a mail transaction"])
    assert client.cmd("RSET").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


def test_ehlo_again_keeps_the_authentication(session):
    # RFC 4954 4: only STARTTLS discards it (test_tls.py)
    client = session()
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.session.connection.relay_client
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 503


# -- failure --------------------------------------------------------------------------

def test_wrong_password_gets_535_after_the_delay_then_a_retry_works(session):
    client = session(config={"auth_failure_delay": "0.4"})
    started = time.monotonic()
    reply = client.cmd("AUTH PLAIN " + b64("\0good@example.com\0nope"))
    assert time.monotonic() - started >= 0.4
    assert reply == (535, ["5.7.8 PLAIN authentication failed for good@example.com "
                           "from 192.0.2.10 - auth_flat_file - wrong password"])
    assert not client.session.connection.relay_client
    assert client.cmd("MAIL FROM:<good@example.com>").code == 250
    assert client.cmd("RCPT TO:<rcpt@elsewhere.example>").code == 550
    assert client.cmd("RSET").code == 250
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235


def test_default_failure_delay_is_two_seconds(session):
    client = session(config={"auth_failure_delay": None})
    started = time.monotonic()
    assert client.cmd("AUTH PLAIN " + b64("\0good@example.com\0nope")).code == 535
    assert 2.0 <= time.monotonic() - started < 4


def test_unknown_user_with_authdeny(session):
    client = session(plugins=["auth/auth_flat_file", "auth/authdeny"])
    reply = client.cmd("AUTH PLAIN " + b64("\0who@example.com\0x"))
    assert reply == (535, ["5.7.8 PLAIN authentication failed for who@example.com from "
                           "192.0.2.10 - who@example.com is not free to abuse my relay"])


@pytest.mark.parametrize("verdict, reply", [
    ("DENYSOFT try later", (454, ["4.7.0 Temporary authentication failure - try later"])),
    ("raise", (454, ["4.7.0 Temporary authentication failure - Internal error - try "
                     "again later"])),
    ("DENY go away", (535, ["5.7.8 LOGIN authentication failed for u@example.com from "
                            "192.0.2.10 - go away"])),
    ("DECLINED", (535, ["5.7.8 LOGIN authentication failed for u@example.com from "
                        "192.0.2.10"])),
    ("bogus", (454, ["4.7.0 Temporary authentication failure - Internal error - try "
                     "again later"])),
])
def test_hook_results_map_to_replies(session, verdict, reply):
    client = session(plugins=[f"returns auth-login {verdict}"])
    client.cmd("AUTH LOGIN " + b64("u@example.com"))
    assert client.cmd(b64("pw")) == reply
    assert not client.session.connection.relay_client


def test_deny_disconnect_closes_after_535(session):
    client = session(plugins=["returns auth-login DENY_DISCONNECT bye"])
    client.cmd("AUTH LOGIN " + b64("u@example.com"))
    assert client.cmd(b64("pw")).code == 535
    assert client.closed()


def test_hooks_get_the_credentials_and_the_generic_hook_runs_last(session):
    client = session(plugins=["returns auth DECLINED", "returns auth-cram-md5 DECLINED",
                              "returns auth-plain DECLINED"])
    client.cmd("AUTH PLAIN " + b64("\0u@example.com\0secret"))
    calls = client.session.connection.notes["returns_calls"]
    assert calls == [("plain", "u@example.com", "secret", None, None)] * 2
    challenge = client.cmd("AUTH CRAM-MD5").lines[0]
    client.cmd(cram_md5(challenge, "u@example.com", "secret"))
    mechanism, user, password, digest, ticket = calls[-1]
    assert (mechanism, user, password) == ("cram-md5", "u@example.com", None)
    assert ticket == __import__("base64").b64decode(challenge).decode()
    assert re.fullmatch(r"[0-9a-f]{32}", digest)


def test_generic_hook_is_skipped_after_a_specific_ok(session):
    client = session(plugins=["auth/auth_flat_file", "returns auth DENY"])
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert "returns_calls" not in client.session.connection.notes


def test_auth_parse_hook_supplies_the_parser(session):
    from qpsmtpd.plugin import Plugin

    class Parser(Plugin):
        def hook_auth_parse(self, session, rest):
            return OK, lambda s, verb, line: (
                (OK, "plain", line.split()[-1]) if line.startswith("plain")
                else (DENY, "parser says no"))
    client = session()
    client.app.dispatcher.add(Parser(client.app, "parser"))
    assert client.cmd(f"AUTH plain x y {GOOD_PLAIN}").code == 235
    client2 = session()
    client2.app.dispatcher.add(Parser(client2.app, "parser"))
    assert client2.cmd("AUTH login") == (501, ["5.5.2 parser says no"])


# -- the session after AUTH ------------------------------------------------------------

def test_received_and_authentication_results_after_auth(session, queue_dir):
    client = session(plugins=["auth/auth_flat_file", "returns received_line DECLINED"])
    assert client.cmd("AUTH LOGIN " + b64("Good@Example.com")).code == 334
    assert client.cmd(b64("good_pass")).code == 235
    assert send_mail(client).code == 250
    message = queued(queue_dir)[0]
    assert message.startswith(
        b"Authentication-Results: mx.example.org; auth=pass (login) "
        b"smtp.auth=Good@Example.com\nReceived: from client.example.net (HELO "
        b"client.example.net) (192.0.2.10)\n by mx.example.org (qpsmtpd/")
    assert re.search(rb"\) with ESMTPA; \w{3}, ", message)
    proto, auth_comment, tls_comment = client.session.connection.notes["returns_calls"][0]
    assert (proto, auth_comment, tls_comment) == (
        "ESMTPA", "(smtp-auth username Good@Example.com, mechanism login)\n", "")


def test_failed_auth_shows_in_authentication_results(session, queue_dir):
    client = session()
    assert client.cmd("AUTH PLAIN " + b64("\0good@example.com\0nope")).code == 535
    assert send_mail(client, "rcpt@example.test").code == 250
    message = queued(queue_dir)[0]
    assert message.startswith(b"Authentication-Results: mx.example.org; auth=fail\n")
    assert re.search(rb"\) with ESMTP; ", message)


def test_success_clears_a_deferred_rejection(session):
    client = session()
    client.session.connection.notes["naughty"] = ["(dnsbl) listed"]
    assert client.cmd(f"AUTH PLAIN {GOOD_PLAIN}").code == 235
    assert client.session.connection.notes["naughty"] == 0
    assert client.log_contains("auth success cleared naughty")


def test_passwords_never_reach_the_log(session):
    client = session(config={"loglevel": "6"})
    client.cmd(f"AUTH PLAIN {GOOD_PLAIN}")
    client.cmd("QUIT")
    client.thread.join(5)
    client2 = session(config={"loglevel": "6"})
    client2.cmd("AUTH LOGIN")
    client2.cmd(b64("good@example.com"))
    client2.cmd(b64("good_pass"))
    client2.cmd("QUIT")
    client2.thread.join(5)
    text = "\n".join(client.log + client2.log)
    assert "dispatching AUTH PLAIN <hidden credentials>" in text
    assert "334 UGFzc3dvcmQ6" in text
    for secret in ("good_pass", b64("good_pass"), GOOD_PLAIN):
        assert secret not in text


# -- the client goes away -------------------------------------------------------------

def test_timeout_during_the_exchange_gets_421(session):
    client = session(config={"timeout": "1"})
    assert client.cmd("AUTH LOGIN").code == 334
    started = time.monotonic()
    assert client.reply() == (421, ["4.4.2 Connection Timed Out"])
    assert time.monotonic() - started < 5
    assert client.closed()


def test_eof_during_the_exchange_ends_the_session(session):
    client = session(plugins=["auth/auth_flat_file", "returns disconnect DECLINED"])
    assert client.cmd("AUTH PLAIN").code == 334
    client.send("AGdvb2")          # half a line, then EOF
    client.sock.shutdown(__import__("socket").SHUT_WR)
    client.thread.join(5)
    assert not client.thread.is_alive()
    assert client.session.connection.notes["returns_calls"] == [()]
    assert client.session.connection.auth_user is None


# -- start-up warning -----------------------------------------------------------------

def test_clear_text_warning_at_start_up(make_app):
    app = make_app(["auth/auth_flat_file"])
    assert any("AUTH PLAIN LOGIN is offered but no TLS: passwords would cross the "
               "network in clear" in line for line in app.captured_log)


def test_no_warning_for_cram_md5_only(make_app):
    app = make_app(["returns auth-cram-md5 DECLINED"], plugin_dirs=[TEST_PLUGINS])
    assert not any("in clear" in line for line in app.captured_log)


# -- validate_password and the hash schemes -------------------------------------------

class FakePlugin:
    config_name = "auth/auth_example:1"

    def __init__(self):
        self.lines = []

    def log(self, level, *parts):
        self.lines.append(" ".join(map(str, parts)))


PASSLIB_SHA256 = ("$pbkdf2-sha256$1000$Verde0.JMWaM0bqXkhJiLA$"
                  "4NOM1TyfDBEj6rHemjteMYJ/vns1V2ZtcbRZkJdkL6c")
PASSLIB_SHA512 = ("$pbkdf2-sha512$1000$kDImxBjDuHduLSWk9F6L8Q$ujSJv/KCkFOpPQ.PPJ80jZm3"
                  "PXxxDWW5d2PHJQsxCGJziAf2UtmYT126anW8UPw2E/QKpMepLb8tIjk65dIJXw")
SHA512_CRYPT = ("$6$ViCDcuzrGrhzXRWk$3pScPXntnljzV0nO07kfS8X5Rfzf3S9LuyKY/Qokhwjf4iq//6o"
                "E9M/yPdFej7Tl0G2ySsJdLrZR57F96E.Vy.")


@pytest.mark.parametrize("kwargs, result", [
    (dict(src_clear="pw", attempt_clear="pw"), (OK, "auth_example")),
    (dict(src_clear="pw", attempt_clear="PW"), (DENY, "auth_example - wrong password")),
    (dict(attempt_clear="pw"), (DENY, "auth_example - no such user")),
    (dict(attempt_clear="pw", deny=DECLINED), (DECLINED, "auth_example - no such user")),
    (dict(src_crypt=PASSLIB_SHA256, attempt_clear="s3cret pass"), (OK, "auth_example")),
    (dict(src_crypt=PASSLIB_SHA256, attempt_clear="s3cret"),
     (DENY, "auth_example - wrong password")),
    (dict(src_crypt=PASSLIB_SHA256, attempt_hash="0" * 32, ticket="<1.2@x>",
          method="cram-md5"), DECLINED),
    (dict(src_clear="pw", attempt_clear=""), (DENY, "auth_example - wrong password")),
])
def test_validate_password(kwargs, result):
    assert auth.validate_password(FakePlugin(), **kwargs) == result


def test_validate_password_cram_md5():
    import hashlib
    import hmac
    ticket = "<abc.def@mx.example.org>"
    digest = hmac.new(b"pw", ticket.encode(), hashlib.md5).hexdigest()
    assert auth.validate_password(FakePlugin(), src_clear="pw", attempt_hash=digest,
                                  ticket=ticket, method="cram-md5")[0] == OK
    assert auth.validate_password(FakePlugin(), src_clear="pw2", attempt_hash=digest,
                                  ticket=ticket, method="cram-md5")[0] == DENY


@pytest.mark.parametrize("stored, password, ok", [
    (PASSLIB_SHA256, "s3cret pass", True),
    (PASSLIB_SHA512, "s3cret pass", True),
    (PASSLIB_SHA512, "s3cret pas", False),
    (SHA512_CRYPT, "abc", True),
    (SHA512_CRYPT, "abd", False),
    ("$pbkdf2-sha256$1000$!!$!!", "x", False),
    ("$pbkdf2-md5$1000$abc$abc", "x", False),
    ("$pbkdf2-sha256$0$Verde0.JMWaM0bqXkhJiLA$4NOM1TyfDBEj6rHemjteMYJ", "x", False),
    ("plain text", "plain text", False),
    ("", "", False),
])
def test_check_password_hash(stored, password, ok):
    assert auth.check_password_hash(stored, password) is ok


def test_hash_password_round_trip_and_cli():
    import subprocess
    import sys
    stored = auth.hash_password("pässword", rounds=1000)
    assert stored.startswith("$pbkdf2-sha256$1000$")
    assert auth.check_password_hash(stored, "pässword")
    assert not auth.check_password_hash(stored, "password")
    assert auth.hash_password("x", rounds=1000) != auth.hash_password("x", rounds=1000)
    result = subprocess.run([sys.executable, "-m", "qpsmtpd.auth", "hash", "--rounds",
                             "1000"], input="secret\n", capture_output=True, text=True,
                            cwd=os.path.dirname(PLUGIN_DIR))
    assert result.returncode == 0, result.stderr
    assert auth.check_password_hash(result.stdout.strip(), "secret")
    empty = subprocess.run([sys.executable, "-m", "qpsmtpd.auth", "hash"], input="\n",
                           capture_output=True, text=True, cwd=os.path.dirname(PLUGIN_DIR))
    assert empty.returncode == 1 and "empty password refused" in empty.stderr

