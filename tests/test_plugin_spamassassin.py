"""spamassassin: scoring through a real spamd (Debian's), over TCP and a
unix socket; GTUBE rejected or tagged, clean mail byte-exact, per-user
preferences, and a spamd that is down, hangs or talks nonsense."""

import email.utils
import importlib.util
import os
import re
import socket
import threading
import time

import pytest

from conftest import PLUGIN_DIR, captured_messages, strip_trace
from daemon_fixtures import GTUBE, free_port, spamd  # noqa: F401 (fixture)
from qpsmtpd.plugin import PluginError

SENDER = "alice@sender.example"
RECIPIENT = "bob@example.test"


def load_module():
    spec = importlib.util.spec_from_file_location(
        "spamassassin_under_test", os.path.join(PLUGIN_DIR, "spamassassin.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


spamassassin = load_module()


def message(subject="lunch on friday", body="shall we have lunch on friday?",
            extra_headers=""):
    """A well-formed message dated now, as SMTP DATA (CR LF, final dot)."""
    date = email.utils.formatdate(localtime=True)
    return (f"From: Alice <{SENDER}>\r\nTo: Bob <{RECIPIENT}>\r\n{extra_headers}"
            f"Subject: {subject}\r\nDate: {date}\r\n"
            f"Message-Id: <20251121100000.4711@sender.example>\r\n\r\n"
            f"Hi Bob,\r\n\r\n{body}\r\n\r\nAlice\r\n.\r\n")


def gtube(**kwargs):
    return message(subject="win big", body=GTUBE.decode(), **kwargs)


def original(data):
    """The DATA text as it lands: LF endings, no final dot."""
    return data[:-3].replace("\r\n", "\n").encode()


@pytest.fixture
def session(plugin_session, queue_dir, spamd):  # noqa: F811
    def factory(args="", config=None, address=None, after=(), **connection):
        line = f"spamassassin spamd_socket {address or spamd.address} {args}".strip()
        return plugin_session(["returns rcpt OK", line, *after, f"capture {queue_dir}"],
                              config, **connection)
    return factory


def spam_headers(landed):
    """The X-Spam-* block at the top of a landed message, and the rest."""
    match = re.match(rb"((?:X-Spam-[^\n]*\n(?:\t[^\n]*\n)*)*)", landed)
    return match.group(1), landed[match.end():]


CHECKER = rb"X-Spam-Checker-Version: SpamAssassin \d+\.\d+\.\d+ \(\d{4}-\d\d-\d\d\) on \S+\n"


# -- the verdicts the admin sees -------------------------------------------------

def test_clean_message_lands_with_the_spam_headers_byte_exact(session, queue_dir):
    client = session()
    data = message()
    assert client.send_message(SENDER, [RECIPIENT], data) == (250, ["2.0.0 Queued! 0"])
    landed = captured_messages(queue_dir)[0]
    checker = re.match(CHECKER, landed)
    assert checker, landed[:200]
    rest = landed[checker.end():]
    assert rest.startswith(
        b"X-Spam-Level: *\n"
        b"X-Spam-Status: No, score=1.3 required=5.0 tests=RCVD_ILLEGAL_IP\n"
        b"\tautolearn=disabled version=4.0.1\n"), rest[:300]
    rest = rest[rest.index(b"version=4.0.1\n") + len(b"version=4.0.1\n"):]
    assert strip_trace(rest) == original(data)
    assert client.log_contains("(data_post) spamassassin: pass, Ham, 1.3")
    assert client.session.connection.notes.get("karma") is None


def test_gtube_is_rejected_above_the_reject_score(session, queue_dir):
    client = session("reject 12")
    reply = client.send_message(SENDER, [RECIPIENT], gtube())
    assert reply == (552, ["5.7.1 spam score exceeded threshold"])
    assert captured_messages(queue_dir) == []
    assert client.log_contains("(data_post) spamassassin: fail, Spam, 1001.3 >= 12")
    assert client.log_contains("spamassassin: karma -1 (-1)")


def test_gtube_is_tagged_when_reject_is_not_set(session, queue_dir):
    client = session()
    data = gtube()
    assert client.send_message(SENDER, [RECIPIENT], data).code == 250
    block, rest = spam_headers(captured_messages(queue_dir)[0])
    assert re.fullmatch(
        CHECKER + rb"X-Spam-Flag: YES\n"
        rb"X-Spam-Level: \*{50}\n"
        rb"X-Spam-Status: Yes, score=1001\.3 required=5\.0 tests=GTUBE,RCVD_ILLEGAL_IP\n"
        rb"\tautolearn=disabled version=4\.0\.1\n", block), block
    assert strip_trace(rest) == original(data)
    assert client.log_contains("spamassassin: pass, Spam, 1001.3")


def test_reject_type_temp_answers_452(session):
    client = session("reject 12 reject_type temp")
    assert client.send_message(SENDER, [RECIPIENT], gtube()) == (
        452, ["4.7.1 spam score exceeded threshold"])


def test_ham_under_the_reject_score_passes(session, queue_dir):
    client = session("reject 5")
    assert client.send_message(SENDER, [RECIPIENT], message()).code == 250
    assert client.log_contains("spamassassin: pass, Ham, 1.3 < 5")


def test_old_reject_threshold_name_still_works(session):
    client = session("reject_threshold 20")
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 552


def test_unix_socket(session, queue_dir, spamd):  # noqa: F811
    client = session("reject 12", address=spamd.socket_path)
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 552
    assert client.send_message(SENDER, [RECIPIENT], message(), helo=None).code == 250
    assert b"X-Spam-Status: No, score=1.3" in captured_messages(queue_dir)[0]


def test_results_note_for_later_plugins(session):
    client = session(after=["data_probe"])
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 250
    record = [r for r in client.session.connection.notes["data_probe"]
              if r["hook"] == "data_post"][0]
    note = record["notes"]["spamassassin"]
    assert note["is_spam"] == "Yes"
    assert note["score"] == "1001.3" and note["required"] == "5.0"
    assert note["tests"].startswith("GTUBE,") and "\t" not in note["tests"]
    assert note["autolearn"] == "disabled" and note["version"] == "4.0.1"


# -- subject and old headers --------------------------------------------------------

def test_munge_subject_threshold(session, queue_dir):
    client = session("munge_subject_threshold 10")
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 250
    assert client.send_message(SENDER, [RECIPIENT], message(), helo=None).code == 250
    spam, ham = captured_messages(queue_dir)
    assert b"\nSubject: *** SPAM *** win big\n" in spam
    assert b"\nSubject: lunch on friday\n" in ham


def test_subject_prefix_from_the_config_file(session, queue_dir):
    client = session("munge_subject_threshold 10", config={"subject_prefix": "[SPAM] (by us)"})
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 250
    assert b"\nSubject: [SPAM] (by us) win big\n" in captured_messages(queue_dir)[0]


FORGED = "X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100 forged\r\nX-Spam-Level: \r\n"


@pytest.mark.parametrize("mode, kept", [
    ("rename", "X-Old-Spam-Flag: NO\r\nX-Old-Spam-Status: No, score=-100 forged\r\n"
               "X-Old-Spam-Level: \r\n"),
    ("drop", ""),
])
def test_incoming_spam_headers_are_renamed_or_dropped(session, queue_dir, mode, kept):
    client = session(f"leave_old_headers {mode}")
    data = gtube(extra_headers=FORGED)
    assert client.send_message(SENDER, [RECIPIENT], data).code == 250
    block, rest = spam_headers(captured_messages(queue_dir)[0])
    assert b"X-Spam-Flag: YES\n" in block and b"X-Spam-Status: Yes," in block
    assert strip_trace(rest) == original(data.replace(FORGED, kept))


def test_forged_flag_is_removed_from_ham_too(session, queue_dir):
    """spamd adds no X-Spam-Flag to ham; the forged YES must still go."""
    client = session("leave_old_headers drop")
    data = message(extra_headers="X-Spam-Flag: YES\r\n")
    assert client.send_message(SENDER, [RECIPIENT], data).code == 250
    landed = captured_messages(queue_dir)[0]
    assert b"X-Spam-Flag" not in landed


def test_keep_leaves_incoming_headers(session, queue_dir):
    client = session("leave_old_headers keep")
    assert client.send_message(SENDER, [RECIPIENT], message(extra_headers=FORGED)).code == 250
    landed = captured_messages(queue_dir)[0]
    assert b"\nX-Spam-Flag: NO\n" in landed and b"X-Old-Spam" not in landed


def test_headers_none_adds_nothing_but_still_rejects(session, queue_dir):
    client = session("headers none reject 12")
    data = message()
    assert client.send_message(SENDER, [RECIPIENT], data).code == 250
    assert strip_trace(captured_messages(queue_dir)[0]) == original(data)
    assert client.send_message(SENDER, [RECIPIENT], gtube(), helo=None).code == 552


# -- per-user preferences (spamd_user) ----------------------------------------------------

def test_vpopmail_uses_the_single_recipients_preferences(session, queue_dir, spamd):  # noqa: F811
    spamd.set_user_prefs("tolerant@example.test", "required_score 2000\n")
    client = session("spamd_user vpopmail reject userprefs")
    reply = client.send_message(SENDER, ["tolerant@example.test"], gtube())
    assert reply.code == 250, reply
    assert b"X-Spam-Status: No, score=1001.3 required=2000.0" in captured_messages(queue_dir)[0]
    assert client.log_contains("spamassassin: pass, Ham, 1001.3 < 2000")
    # Someone without preferences gets the site threshold: rejected.
    assert client.send_message(SENDER, [RECIPIENT], gtube(), helo=None).code == 552


def test_several_recipients_get_x_spam_user(session, queue_dir, spamd):  # noqa: F811
    spamd.set_user_prefs("tolerant@example.test", "required_score 2000\n")
    client = session("spamd_user vpopmail reject userprefs")
    reply = client.send_message(SENDER, ["tolerant@example.test", RECIPIENT], gtube())
    assert reply.code == 552  # the user's own threshold cannot apply
    assert client.send_message(SENDER, ["tolerant@example.test", RECIPIENT], message(),
                               helo=None).code == 250
    block, _ = spam_headers(captured_messages(queue_dir)[0])
    assert block.startswith(b"X-Spam-Checker-Version: ")
    assert block.endswith(b"X-Spam-User: vpopmail, 2 recipients\n")


def test_spamd_user_is_sent(session, queue_dir, spamd):  # noqa: F811
    spamd.set_user_prefs("someone", "required_score 0.5\n")
    client = session("spamd_user someone")
    assert client.send_message(SENDER, [RECIPIENT], message()).code == 250
    assert b"X-Spam-Status: Yes, score=1.3 required=0.5" in captured_messages(queue_dir)[0]


# -- what is not scanned ----------------------------------------------------------------

def test_message_over_size_limit_is_not_scanned(session, queue_dir):
    client = session("reject 12 size_limit 1000")
    data = message(body=GTUBE.decode() + "\r\n" + "padding line\r\n" * 100)
    assert client.send_message(SENDER, [RECIPIENT], data).code == 250
    assert b"X-Spam" not in captured_messages(queue_dir)[0]
    assert client.log_contains("spamassassin: skip, too large (")


def test_relay_client_is_not_scanned(session, queue_dir):
    client = session("reject 12", relay_client=True)
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 250
    assert client.log_contains("spamassassin: skip, relay client")


def test_large_message_with_dots_reaches_spamd_whole(session, queue_dir):
    """Content-length must match what is streamed, or spamd refuses the
    request: 400 kB of lines, some starting with dots. (SpamAssassin reads
    only the first 50 kB of a body part, so GTUBE goes first.)"""
    lines = "".join(f"..line {n} of a long message\r\n" for n in range(14000))
    client = session("reject 12")
    data = message(body=GTUBE.decode() + "\r\n" + lines)
    assert len(data) > 400_000
    assert client.send_message(SENDER, [RECIPIENT], data).code == 552
    assert not client.log_contains("spamassassin: error")


# -- a spamd that is down, slow or confused ---------------------------------------------------

def test_spamd_down_accepts_with_a_log_line(session, queue_dir):
    port = free_port()
    client = session("reject 12", address=f"127.0.0.1:{port}")
    assert client.send_message(SENDER, [RECIPIENT], gtube()).code == 250
    assert client.log_contains(f"spamassassin: error, cannot connect to spamd at "
                               f"127.0.0.1:{port}: Connection refused")
    assert b"X-Spam" not in captured_messages(queue_dir)[0]


def test_spamd_down_defers_with_defer_on_error(session, tmp_path):
    client = session("defer_on_error 1", address=str(tmp_path / "no-such.sock"))
    assert client.send_message(SENDER, [RECIPIENT], message()) == (
        452, ["4.7.1 Unable to scan for spam"])


class SilentServer:
    """A listener that accepts and never answers: a hung spamd."""

    def __init__(self, answer=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.answer is not None:
                conn.recv(65536)
                conn.sendall(self.answer)
                conn.close()

    def close(self):
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("defer, code", [("0", 250), ("1", 452)])
def test_hung_spamd_times_out(session, defer, code):
    server = SilentServer()
    try:
        client = session(f"timeout 1 defer_on_error {defer} reject 12",
                         address=f"127.0.0.1:{server.port}")
        started = time.monotonic()
        assert client.send_message(SENDER, [RECIPIENT], gtube()).code == code
        assert time.monotonic() - started < 4
        assert client.log_contains("spamassassin: error, timeout waiting for spamd")
    finally:
        server.close()


def test_nonsense_answer_is_an_error(session):
    """Not something the real spamd does: a different service on its port."""
    server = SilentServer(answer=b"HTTP/1.0 400 Bad Request\r\n\r\n")
    try:
        client = session("defer_on_error 1", address=f"127.0.0.1:{server.port}")
        assert client.send_message(SENDER, [RECIPIENT], message()).code == 452
        assert client.log_contains("spamassassin: error, invalid response from spamd: "
                                   "'HTTP/1.0 400 Bad Request'")
    finally:
        server.close()


# -- the spamd protocol itself, against the real daemon -------------------------------------

def gtube_request():
    data = b"Subject: test\r\nFrom: a@b.example\r\n\r\n" + GTUBE + b"\r\n"
    return [data], len(data)


def test_protocol_ping(spamd):  # noqa: F811
    assert spamassassin.SpamdClient(spamd.address, 10).ping()
    assert spamassassin.SpamdClient(spamd.socket_path, 10).ping()


def test_protocol_check(spamd):  # noqa: F811
    reply = spamassassin.SpamdClient(spamd.address).request("CHECK", *gtube_request())
    is_spam, score, threshold = reply.spam
    assert (is_spam, threshold) == (True, 5.0) and score >= 1000
    assert reply.body == b""


def test_protocol_symbols(spamd):  # noqa: F811
    reply = spamassassin.SpamdClient(spamd.address).request("SYMBOLS", *gtube_request())
    assert reply.spam[0] is True
    assert "GTUBE" in reply.body.decode().strip().split(",")


def test_protocol_report(spamd):  # noqa: F811
    reply = spamassassin.SpamdClient(spamd.socket_path).request("REPORT", *gtube_request())
    assert reply.spam[0] is True and reply.spam[1] >= 1000
    assert b"GTUBE" in reply.body and b"Content analysis details" in reply.body


def test_protocol_user_preferences(spamd):  # noqa: F811
    spamd.set_user_prefs("tolerant@example.test", "required_score 2000\n")
    reply = spamassassin.SpamdClient(spamd.address).request(
        "CHECK", *gtube_request(), user="tolerant@example.test")
    is_spam, score, threshold = reply.spam
    assert (is_spam, threshold) == (False, 2000.0) and score >= 1000


def test_protocol_error_from_spamd(spamd):  # noqa: F811
    with pytest.raises(spamassassin.SpamdError, match="spamd error"):
        spamassassin.SpamdClient(spamd.address).request("NOSUCHCOMMAND", *gtube_request())


def test_protocol_wrong_length_is_refused_by_us(spamd):  # noqa: F811
    chunks, length = gtube_request()
    with pytest.raises(spamassassin.SpamdError, match="length changed"):
        spamassassin.SpamdClient(spamd.address).request("CHECK", chunks, length + 5)


@pytest.mark.parametrize("text, expected", [
    ("Yes, score=1000.0 required=5.0 tests=GTUBE,MSGID_SHORT,\n\tNO_RECEIVED "
     "autolearn=no version=4.0.1",
     {"is_spam": "Yes", "score": "1000.0", "required": "5.0",
      "tests": "GTUBE,MSGID_SHORT,NO_RECEIVED", "autolearn": "no", "version": "4.0.1"}),
    ("No, hits=2.1 required=5.0 tests=none", {"is_spam": "No", "score": "2.1",
                                              "required": "5.0", "tests": "none"}),
    ("", {"is_spam": ""}),
])
def test_parse_spam_status(text, expected):
    assert spamassassin.parse_spam_status(text) == expected


@pytest.mark.parametrize("address, expected", [
    ("localhost:783", ("localhost", 783)), ("127.0.0.1:7830", ("127.0.0.1", 7830)),
    ("[::1]:783", ("::1", 783)), ("spamd.example", ("spamd.example", 783)),
    ("[::1]", ("::1", 783)),
])
def test_split_host_port(address, expected):
    assert spamassassin.split_host_port(address) == expected


# -- bad configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("args, error", [
    ("reject lots", "reject must be a number"),
    ("leave_old_headers maybe", "leave_old_headers must be rename, drop or keep"),
    ("size_limit big", "size_limit must be a number"),
    ("reject", "Bad arguments"),
])
def test_bad_arguments_stop_the_start(make_app, args, error):
    with pytest.raises(PluginError, match=error):
        make_app([f"spamassassin {args}"])
