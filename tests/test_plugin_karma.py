"""karma: verdicts recorded per IP, the penalty box, the recipient limit, the
envelope checks, karma_tlds, the header, the store on SQLite and Redis, the
karma_tool command, and 50 concurrent daemon connections.

Evidence comes from ``evidence`` (tests/store_fixtures.py), a test-only
plugin that adjusts karma and defers rejections as the DNS plugins do."""

import io
import socket
import threading
import time

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd import karma_tool
from qpsmtpd.connection import Connection
from qpsmtpd.plugin import PluginError
from qpsmtpd.store import ip_key, open_store
from store_fixtures import (  # noqa: F401
    fake_clock, redis_server, store_url, write_evidence_plugin)
from forkserver_fixtures import Daemon, wait_for

IP = "198.51.100.7"
KEY = ip_key(IP)
DAY = 86400


@pytest.fixture
def url(tmp_path):
    return f"sqlite:{tmp_path / 'db' / 'qpsmtpd.sqlite'}"


@pytest.fixture
def site(make_app, smtp_session, tmp_path):
    """site(url, plugins..., **config files) -> connect(**connection) -> Client"""
    evidence = write_evidence_plugin(tmp_path / "testplugins")

    def build(store, *plugins, **files):
        config = {"rcpthosts": ["example.org"], "store": store}
        config.update(files)
        app = make_app(list(plugins) + [f"capture {tmp_path / 'queue'}"], config,
                       plugin_dirs=[evidence, TEST_PLUGINS, PLUGIN_DIR])

        def connect(remote_ip=IP, **connection):
            client = smtp_session(app=app, remote_ip=remote_ip, **connection)
            client.app = app
            return client
        return connect
    return build


def finish(client):
    """QUIT, then wait until the session's disconnect hooks have run."""
    client.cmd("QUIT")
    client.close()


def record(store, ip=IP):
    value = open_store(store, "karma").get(ip_key(ip))
    return None if value is None else [int(x) for x in value.split(":")]


def log(client, fragment):
    return any(fragment in line for line in client.log)


# -- verdicts at disconnect (both backends) ------------------------------------------

@pytest.mark.parametrize("score, expected, line", [
    (-3, [1, 0, 1], "negative, sent to penalty box, (msg: -3, his: -1)"),
    (3, [0, 1, 1], "positive, (msg: 3, his: 1)"),
    (-2, [0, 0, 1], "neutral, (msg: -2, his: 0)"),
    (2, [0, 0, 1], "neutral, (msg: 2, his: 0)"),
])
def test_verdict_is_recorded(site, store_url, score, expected, line):
    client = site(store_url, f"evidence connect_karma {score}", "karma")()
    assert client.greeting.code == 220
    assert log(client, "(connect) karma: pass, no record")
    finish(client)
    stored = record(store_url)
    assert stored[1:] == expected
    assert (stored[0] > 0) == (expected[0] == 1)   # penalty start set when boxed
    assert log(client, f"(disconnect) karma: {line}")


def test_zero_score_leaves_no_record(site, store_url):
    client = site(store_url, "karma")()
    finish(client)
    assert record(store_url) is None
    assert log(client, "(disconnect) karma: no karma")


def test_flagged_naughty_counts_even_with_a_mild_score(site, store_url):
    """Upstream #338: a deferred rejection makes the connection naughty."""
    client = site(store_url, "evidence listed Listed_at_test", "karma")()
    assert client.session.connection.notes["karma"] == -1
    finish(client)
    assert record(store_url)[1:] == [1, 0, 1]
    assert log(client, "negative, sent to penalty box, (msg: -1, his: -1)")


def test_immune_sessions_are_not_recorded(site, store_url):
    client = site(store_url, "evidence connect_karma -5", "karma")(relay_client=True)
    finish(client)
    assert record(store_url) is None
    assert log(client, "(connect) karma: skip, relay client")


def test_negative_limit_spares_an_ip_with_good_history(site, store_url):
    open_store(store_url, "karma").set(KEY, "0:1:2:3")
    client = site(store_url, "evidence connect_karma -3", "karma negative 2")()
    assert client.session.connection.notes["karma_history"] == 1
    finish(client)
    assert record(store_url) == [0, 2, 2, 4]
    assert log(client, "(disconnect) karma: negative, (msg: -3, his: 0)")


# -- the penalty box -------------------------------------------------------------------

def test_penalty_box_deferred_to_naughty(site, url, fake_clock):
    open_store(url, "karma").set(KEY, f"{int(fake_clock.now) - 3600}:1:0:1")
    connect = site(url, "karma", "naughty reject mail", "rcpt_ok")
    client = connect()
    assert client.greeting.code == 220
    assert log(client, "(connect) karma: fail, NAUGHTY, 1 naughty, 0 nice, 2 connects")
    assert client.cmd("EHLO client.example.net").code == 250
    reply = client.cmd("MAIL FROM:<a@example.net>")
    assert reply.code == 550
    assert reply.lines == ["5.7.1 (karma) You were naughty. You cannot connect for 0.96 "
                           "more days."]
    assert client.closed()
    client.close()
    # counted once at connect; the penalty is not restarted
    assert record(url) == [int(fake_clock.now) - 3600, 1, 0, 2]


def test_penalty_box_refuses_at_connect_with_reject_1(site, url, fake_clock):
    open_store(url, "karma").set(KEY, f"{int(fake_clock.now)}:2:1:5")
    client = site(url, "karma reject 1")()
    assert client.greeting == (550, ["You were naughty. You cannot connect for 1.00 more days."])
    assert client.closed()
    client.close()
    assert record(url)[3] == 6


def test_penalty_expires(site, url, fake_clock):
    open_store(url, "karma").set(KEY, f"{int(fake_clock.now)}:1:0:1")
    connect = site(url, "karma reject 1 penalty_days 0.5")
    fake_clock.advance(0.5 * DAY - 60)
    client = connect()
    assert client.greeting.code == 550
    assert client.greeting.lines[0].endswith("for 0.00 more days.")
    client.close()
    fake_clock.advance(120)
    client = connect()
    assert client.greeting.code == 220
    assert log(client, "(connect) karma: pass, penalty expired (1 naughty, 0 nice, 2 connects)")
    finish(client)


def test_penalty_box_bonus_for_a_persistent_spammer(site, url, fake_clock):
    open_store(url, "karma").set(KEY, "0:6:0:6")
    connect = site(url, "evidence connect_karma -3", "karma reject 1")
    client = connect()
    assert client.session.connection.notes["karma_history"] == -6
    finish(client)
    assert log(client, "negative, sent to penalty box, penalty box bonus!, (msg: -3, his: -7)")
    assert record(url) == [int(fake_clock.now) + 7 * DAY, 7, 0, 7]
    client = connect()
    assert client.greeting.lines == ["You were naughty. You cannot connect for 8.00 more days."]
    client.close()


def test_penalty_box_0_never_refuses(site, url, fake_clock):
    open_store(url, "karma").set(KEY, f"{int(fake_clock.now)}:3:0:3")
    client = site(url, "karma reject 1 penalty_box 0")()
    assert client.greeting.code == 220
    assert log(client, "pass, no penalty (3 naughty, 0 nice, 3 connects)")
    finish(client)


def test_reject_0_only_logs_and_records_the_session(site, url, fake_clock):
    open_store(url, "karma").set(KEY, f"{int(fake_clock.now)}:1:0:1")
    client = site(url, "evidence connect_karma 3", "karma reject 0")()
    assert client.greeting.code == 220
    assert log(client, "(connect) karma: fail, tolerated, 1 naughty, 0 nice, 2 connects")
    finish(client)
    assert record(url)[1:] == [1, 1, 3]


# -- pre-connection, history ---------------------------------------------------------------

class PreConnection:
    def __init__(self, ip):
        self.connection = Connection(remote_ip=ip)


def test_pre_connection_sets_the_history_for_hosts_allow(make_app, url):
    open_store(url, "karma").set(KEY, "0:1:13:20")
    app = make_app(["karma"], {"store": url})
    karma = app.dispatcher.plugins[0]
    session = PreConnection(IP)
    karma.hook_pre_connection(session, {"remote_ip": IP})
    # the record travels to connect with the connection (no second read)
    assert session.connection.notes == {"karma_history": 12,
                                        "karma_record": (0, 1, 13, 20)}
    unknown = PreConnection("192.0.2.99")
    karma.hook_pre_connection(unknown, {"remote_ip": "192.0.2.99"})
    assert unknown.connection.notes == {"karma_history": 0, "karma_record": ()}


def test_good_history_at_connect(site, url):
    open_store(url, "karma").set(KEY, "0:0:11:11")
    client = site(url, "karma")()
    notes = client.session.connection.notes
    assert notes["karma_history"] == 11 and notes["karma"] == 1
    assert log(client, "(connect) karma: pass, no penalty (0 naughty, 11 nice, 11 connects)")
    finish(client)


# -- MAIL / RCPT -------------------------------------------------------------------------

def test_space_after_colon_costs_two(site, url):
    client = site(url, "karma", "rcpt_ok")()
    client.cmd("EHLO client.example.net")
    assert client.cmd("MAIL FROM: <a@example.net>").code == 250
    assert client.session.connection.notes["karma"] == -2
    assert log(client, "illegal envelope address format: FROM: <a@example.net>")
    assert client.cmd("RCPT TO: <b@example.org>").code == 250
    assert client.session.connection.notes["karma"] == -4
    finish(client)


def test_karma_tlds(site, url):
    connect = site(url, "karma", "rcpt_ok",
                   karma_tlds=["# tld:score", "biz:-2", "example:3", "bad line", "info:x"])
    client = connect()
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@shop.BIZ>")
    assert client.session.connection.notes["karma"] == -2
    assert log(client, "adjusting karma for .biz envelope sender")
    client.cmd("RSET")
    client.cmd("MAIL FROM:<a@x.example>")
    assert client.session.connection.notes["karma"] == 1
    client.cmd("RSET")
    client.cmd("MAIL FROM:<>")
    client.cmd("RSET")
    client.cmd("MAIL FROM:<a@biz.example.com>")
    assert client.session.connection.notes["karma"] == 1
    finish(client)


def test_unknown_sender_gets_one_recipient(site, url):
    client = site(url, "karma", "rcpt_ok")()
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    assert client.cmd("RCPT TO:<one@example.org>").code == 250
    reply = client.cmd("RCPT TO:<two@example.org>")
    assert reply == (550, ["5.7.1 too many recipients for karma 0 (h: 0)"])
    assert client.session.connection.notes["recipient_count"] == 2
    finish(client)


@pytest.mark.parametrize("plugins, value, connection", [
    (["evidence connect_karma 1"], None, {}),
    ([], "0:0:1:1", {}),
    ([], None, {"relay_client": True}),
])
def test_good_senders_may_have_more_recipients(site, url, plugins, value, connection):
    if value:
        open_store(url, "karma").set(KEY, value)
    client = site(url, *plugins, "karma", "rcpt_ok")(**connection)
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    for n in range(3):
        assert client.cmd(f"RCPT TO:<r{n}@example.org>").code == 250
    finish(client)


# -- DATA ------------------------------------------------------------------------------------

def test_very_bad_karma_is_refused_at_data(site, url):
    client = site(url, "evidence connect_karma -5", "karma reject 1", "rcpt_ok")()
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    client.cmd("RCPT TO:<b@example.org>")
    assert client.cmd("DATA") == (554, ["5.7.1 very bad karma: -5"])
    assert client.closed()
    client.close()
    assert record(url)[1] == 1


def test_very_bad_karma_defers_to_naughty_by_default(site, url):
    client = site(url, "evidence connect_karma -5", "karma", "rcpt_ok")()
    client.cmd("EHLO client.example.net")
    client.cmd("MAIL FROM:<a@example.net>")
    client.cmd("RCPT TO:<b@example.org>")
    assert client.cmd("DATA").code == 354     # no naughty plugin loaded
    assert client.session.connection.notes["naughty"] == ["(karma) very bad karma: -5"]
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert client.reply().code == 250
    finish(client)


def test_karma_header(site, url, tmp_path):
    client = site(url, "evidence connect_karma 2", "karma add_header 1", "rcpt_ok")()
    reply = client.send_message("a@example.net", ["b@example.org"],
                                "X-Karma: forged\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert reply.code == 250
    finish(client)
    message = (tmp_path / "queue" / "0.eml").read_bytes()
    assert b"X-Karma: 2 (history 0)\n" in message
    assert b"forged" not in message


# -- bad input, broken store -------------------------------------------------------------------

@pytest.mark.parametrize("line", ["karma negative", "karma strikes many",
                                  "karma store mysql://x/y"])
def test_bad_arguments_stop_the_start(make_app, url, line):
    with pytest.raises(PluginError):
        make_app([line], {"store": url})


def test_unreachable_store_lets_mail_through(site):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    client = site(dead, "evidence connect_karma -5", "karma", "rcpt_ok")()
    assert client.greeting.code == 220
    assert log(client, "(connect) karma: error, store: ")
    assert client.send_message("a@example.net", ["b@example.org"],
                               "Subject: x\r\n\r\nbody\r\n.\r\n").code == 250
    finish(client)
    assert log(client, "(disconnect) karma: error, store: ")


def test_garbage_record_reads_as_zero(site, url):
    open_store(url, "karma").set(KEY, "junk:x::")
    client = site(url, "evidence connect_karma 3", "karma")()
    assert log(client, "pass, no penalty (0 naughty, 0 nice, 0 connects)")
    finish(client)
    assert record(url) == [0, 0, 1, 1]


def test_one_store_connection_serves_every_session(site, url):
    # A worker serving sessions one after another keeps its one SQLite
    # connection (opened by the first session that needed it).
    from qpsmtpd import store as store_module
    connect = site(url, "evidence connect_karma -3", "karma")
    finish(connect())
    connection = store_module._backends[url]._connection
    assert connection is not None
    finish(connect(remote_ip="198.51.100.8"))
    assert store_module._backends[url]._connection is connection
    assert record(url)[1:] == [1, 0, 1]
    assert record(url, "198.51.100.8")[1:] == [1, 0, 1]


def test_a_failed_write_does_not_break_the_next_session(site, url):
    # One process serving two connections in a row (a forkserver worker):
    # the first one's store write fails half-way (COMMIT), the second one
    # must be recorded normally, on the same backend.
    import sqlite3

    from qpsmtpd import store as store_module
    connect = site(url, "evidence connect_karma -3", "karma")
    first = connect()
    backend = store_module._backends[url]
    real = backend._connection

    class FailingCommit:
        in_transaction = property(lambda self: real.in_transaction)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

        def close(self):
            real.close()

    backend._connection = FailingCommit()
    finish(first)
    assert log(first, "(disconnect) karma: error, store: ")
    assert record(url) is None
    second = connect()
    finish(second)
    assert sum("(disconnect) karma: error" in line for line in second.log) == 1
    assert record(url)[1:] == [1, 0, 1]


# -- karma_tool --------------------------------------------------------------------------------

def tool(*argv):
    out = io.StringIO()
    status = karma_tool.main(list(argv), out=out)
    return status, out.getvalue()


def test_karma_tool_list_search_capture_release(store_url, fake_clock):
    store = open_store(store_url, "karma")
    store.set(ip_key("192.0.2.1"), "0:2:0:2")
    store.set(ip_key("192.0.2.2"), "0:0:5:5")
    store.set(ip_key("2001:db8::1"), "0:1:1:4")
    status, out = tool("--store", store_url, "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"using karma store at {store_url}"
    assert lines[1].split() == ["IP", "Address", "Penalty", "Naughty", "Nice", "Connects"]
    assert lines[2].split() == ["192.0.2.1", "-", "2", "0", "2"]
    assert lines[-1] == "total: 3 IPs, 3 naughty, 6 nice, 11 connects"
    assert [l.split()[0] for l in tool("--store", store_url, "search", "nice")[1].splitlines()[2:-1]] \
        == ["192.0.2.2", "2001:db8::1"]
    assert [l.split()[0] for l in tool("--store", store_url, "search", "both")[1].splitlines()[2:-1]] \
        == ["2001:db8::1"]
    assert tool("--store", store_url, "search", "192.0.2.2")[1].splitlines()[-1] == \
        "total: 1 IPs, 0 naughty, 5 nice, 5 connects"
    assert tool("--store", store_url, "capture", "192.0.2.2")[0] == 0
    assert store.get(ip_key("192.0.2.2")) == f"{int(fake_clock.now)}:1:5:5"
    assert tool("--store", store_url, "release", "192.0.2.1")[0] == 0
    assert store.get(ip_key("192.0.2.1")) == "0:0:0:2"


def test_karma_tool_prune_like_qpsmtpd(url, fake_clock):
    store = open_store(url, "karma")
    store.set("1", f"{int(fake_clock.now) - 2 * DAY}:1:0:1")
    store.set("2", f"{int(fake_clock.now) - 9 * DAY}:1:0:1")
    store.set("3", "0:0:4:4")
    status, out = tool("--store", url, "prune")
    assert out.splitlines()[-1] == "pruned 2 of 3 DB entries"
    assert [k for k, _ in store.items()] == ["1"]
    assert tool("--store", url, "prune", "1")[1].splitlines()[-1] == "pruned 1 of 1 DB entries"


def test_karma_tool_import_and_dump(url, tmp_path):
    dumped = tmp_path / "karma.txt"
    dumped.write_text("3221225985 0:1:2:3\n192.0.2.2 0:0:1:1\nbroken-line\n\n")
    status, out = tool("--store", url, "import", str(dumped))
    assert status == 0 and "imported 2 entries, skipped 2 lines" in out
    assert tool("--store", url, "dump")[1].splitlines()[1:] == \
        ["3221225985 0:1:2:3", "3221225986 0:0:1:1"]
    grey = tmp_path / "grey.txt"
    grey.write_text("192.0.2.1:a@example.net 1700000000:1:0:1\n")
    assert tool("--store", url, "--name", "greylisting", "import", str(grey))[0] == 0
    assert open_store(url, "greylisting").get("3221225985:a@example.net") == "1700000000:1:0:1"


def test_karma_tool_finds_the_store_from_config(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.mkdir()
    (config / "plugins").write_text(f"relay\nkarma db_dir {tmp_path / 'karmadb'}\n")
    monkeypatch.chdir(tmp_path)
    assert tool("capture", "192.0.2.9")[0] == 0
    assert open_store(f"sqlite:{tmp_path / 'karmadb' / 'qpsmtpd.sqlite'}", "karma") \
        .get(ip_key("192.0.2.9")).endswith(":1:0:0")
    (config / "plugins").write_text("relay\n")
    (config / "store").write_text(f"sqlite:{tmp_path / 'site.sqlite'}\n")
    assert tool("list")[1].splitlines()[0] == f"using karma store at sqlite:{tmp_path}/site.sqlite"


@pytest.mark.parametrize("argv", [["capture", "not-an-ip"], ["capture"], ["prune", "soon"],
                                  ["import", "/nonexistent/file"], ["import"],
                                  ["--store", "mysql://x", "list"]])
def test_karma_tool_bad_input(url, argv, capsys):
    open_store(url, "karma").set("1", "0:0:1:1")
    if "--store" not in argv:
        argv = ["--store", url] + argv
    status, _ = tool(*argv)
    assert status == 1
    assert capsys.readouterr().err.startswith("error: ")


# -- 50 concurrent connections through the real forkserver -------------------------------------

def test_fifty_concurrent_connections_lose_no_update(tmp_path, store_url):
    evidence = write_evidence_plugin(tmp_path / "testplugins")
    daemon = Daemon(tmp_path / "mx", plugins=("evidence connect_karma 3", "karma", "rcpt_ok"),
                    config={"store": store_url}, plugin_dirs=[evidence],
                    args=("--no-rdns", "-c", "80", "-m", "0"))
    try:
        before = record(store_url, "127.0.0.1") or [0, 0, 0, 0]
        barrier = threading.Barrier(50)
        replies = []

        def one_client():
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
                stream = sock.makefile("rb")
                greeting = stream.readline()
                barrier.wait(30)
                sock.sendall(b"QUIT\r\n")
                replies.append((greeting[:3], stream.readline()[:3]))
        threads = [threading.Thread(target=one_client) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert replies == [(b"220", b"221")] * 50
        deadline = time.time() + 30
        while time.time() < deadline:
            after = record(store_url, "127.0.0.1")
            if after and after[3] - before[3] >= 50:
                break
            time.sleep(0.1)
        after = record(store_url, "127.0.0.1")
        assert after[2] - before[2] == 50      # nice
        assert after[3] - before[3] == 50      # connects
        assert after[1] == before[1] == 0      # naughty
        assert "karma: error" not in daemon.log()
    finally:
        daemon.stop()


def test_karma_tool_does_not_create_a_store_to_list_it(tmp_path):
    path = tmp_path / "none" / "qpsmtpd.sqlite"
    status, out = tool("--store", f"sqlite:{path}", "list")
    assert status == 0 and "no data yet" in out
    assert not path.exists()


def test_the_forkserver_boxes_with_the_record_read_in_the_parent(tmp_path, store_url):
    """pre-connection (the parent) reads the record once; the worker's
    connect hook decides from it."""
    open_store(store_url, "karma").set(ip_key("127.0.0.1"), f"{int(time.time())}:2:1:5")
    daemon = Daemon(tmp_path / "mx", plugins=("karma reject 1", "rcpt_ok"),
                    config={"store": store_url}, args=("--no-rdns",))
    try:
        client = daemon.connect(greeting=False)
        assert client.raw_line() == \
            b"550 You were naughty. You cannot connect for 1.00 more days.\r\n"
        client.close()
        assert wait_for(lambda: record(store_url, "127.0.0.1")[3] == 6)
    finally:
        daemon.stop()
