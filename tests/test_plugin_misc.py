"""connection_time, random_error, loadcheck and user_config."""

import os
import re
import sys
import time

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd.address import Address
from qpsmtpd.connection import Connection
from qpsmtpd.constants import DECLINED, OK
from qpsmtpd.plugin import PluginError

ELAPSED = re.compile(r"\d+ \(post-connection\) connection_time: (\d+\.\d{3}) s\.\Z")


def elapsed_lines(log):
    return [float(m.group(1)) for m in map(ELAPSED.match, log) if m]


# -- connection_time -----------------------------------------------------------

def test_connection_time_logs_the_duration(smtp_session):
    client = smtp_session(["connection_time"])
    time.sleep(0.2)
    assert client.cmd("QUIT").code == 221
    client.close()
    [elapsed] = elapsed_lines(client.log)
    assert 0.2 <= elapsed < 5
    assert any(re.search(r"\(connect\) connection_time: started at \d+\.\d{3}$", line)
               for line in client.log)


def test_connection_time_at_client_eof(smtp_session):
    client = smtp_session(["connection_time"])
    client.close()                       # the client just goes away
    assert len(elapsed_lines(client.log)) == 1


def test_connection_time_starts_at_pre_connection(smtp_session, make_app):
    from qpsmtpd_forkserver import PreConnection
    app = make_app(["connection_time"])
    pre = PreConnection(app, Connection(remote_ip="192.0.2.10", remote_port=40000))
    info = {"remote_ip": "192.0.2.10", "remote_port": 40000, "local_ip": "192.0.2.1",
            "local_port": 25, "max_conn_ip": 0, "child_addrs": []}
    app.dispatcher.run_hooks(pre, "pre-connection", info)
    time.sleep(0.3)
    # the forkserver hands the same connection (and its notes) to the child
    client = smtp_session(app=app, notes=pre.connection.notes)
    assert client.cmd("QUIT").code == 221
    client.close()
    [elapsed] = elapsed_lines(client.log)
    assert elapsed >= 0.3
    assert not client.log_contains("(connect) connection_time: started at")


@pytest.mark.parametrize("line, shown", [
    ("connection_time", False),             # LOGINFO, master level 5
    ("connection_time LOGNOTICE", True),     # old positional form
    ("connection_time 5", True),
    ("connection_time loglevel 4", True),
    ("connection_time loglevel +1", False),
])
def test_connection_time_level(smtp_session, make_app, line, shown):
    app = make_app([line], {"loglevel": "5"})
    client = smtp_session(app=app)
    assert client.cmd("QUIT").code == 221
    client.close()
    assert bool(elapsed_lines(client.log)) is shown


def test_connection_time_odd_arguments(smtp_session):
    client = smtp_session(["connection_time loglevel 5 extra"])
    assert client.log_contains("connection_time: invalid arguments")
    assert client.cmd("QUIT").code == 221
    client.close()
    assert len(elapsed_lines(client.log)) == 1


# -- random_error --------------------------------------------------------------

def test_random_error_100_fails_every_session_at_connect(smtp_session, make_app):
    app = make_app(["random_error 100"])
    for _ in range(10):
        client = smtp_session(app=app)
        assert client.greeting == (450, ["random failure"])
        assert client.closed()
    assert any(line.endswith("(connect) random_error: to fail, rand(1) must be "
                             "more than 0.0") for line in app.captured_log)


@pytest.mark.parametrize("percentage", ["0", "-1", "-50.5"])
def test_random_error_zero_or_negative_never_fails(smtp_session, make_app, percentage):
    app = make_app([f"random_error {percentage}", "returns rcpt OK", "returns queue OK"],
                   plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
    for _ in range(3):
        client = smtp_session(app=app)
        assert client.greeting.code == 220
        body = "Subject: x\r\n\r\nhello\r\n.\r\n"
        assert client.send_message("a@example.net", ["b@example.org"], body).code == 250
    stages = [line for line in app.captured_log if "random_error: to fail" in line]
    assert {re.search(r"\((\w+)\)", line).group(1) for line in stages} == {
        "connect", "ehlo", "mail", "rcpt", "data", "data_post"}
    assert all(line.endswith("more than 1.0") for line in stages)


def test_random_error_over_100_counts_as_100(smtp_session):
    client = smtp_session(["random_error 250"])
    assert client.greeting == (450, ["random failure"])


@pytest.mark.parametrize("arguments, message", [
    ("1 2", "Invalid args: '1 2'"), ("often", "Invalid args: 'often'")])
def test_random_error_bad_arguments(make_app, arguments, message):
    with pytest.raises(PluginError, match=re.escape(message)):
        make_app([f"random_error {arguments}"])


# -- loadcheck -----------------------------------------------------------------

def current_load():
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


needs_proc = pytest.mark.skipif(not os.access("/proc/loadavg", os.R_OK),
                                reason="no /proc/loadavg on this system")


@needs_proc
def test_loadcheck_refuses_above_max_load(smtp_session):
    client = smtp_session(["loadcheck max_load -1"])
    assert client.greeting == (450, ["Server load too high, please try again later."])
    assert client.closed()
    [line] = [line for line in client.log if "local load too high" in line]
    assert re.fullmatch(r"\d+ \(connect\) loadcheck: local load too high: \d+\.\d+", line)


@needs_proc
def test_loadcheck_accepts_below_max_load_and_caches(smtp_session, make_app):
    app = make_app(["loadcheck max_load 100000 cache_time 60"])
    for _ in range(3):
        client = smtp_session(app=app)
        assert client.greeting.code == 220
        assert client.cmd("QUIT").code == 221
    reported = [line for line in app.captured_log if "/proc/loadavg reported:" in line]
    assert len(reported) == 1            # measured once, then cached
    load = float(reported[0].rsplit(" ", 1)[1])
    assert abs(load - current_load()) < 50
    assert sum("continuing with load:" in line for line in app.captured_log) == 3


def test_loadcheck_bad_arguments(make_app):
    with pytest.raises(PluginError, match="must be numbers"):
        make_app(["loadcheck max_load high"])
    with pytest.raises(PluginError, match="Bad arguments"):
        make_app(["loadcheck max_load"])


def test_loadcheck_uptime_parser(make_app):
    app = make_app([])
    module = sys.modules[app.dispatcher.plugin_class("loadcheck").__module__]
    assert module.parse_uptime(
        "10:33AM  up  2:06, 1 user, load averages: 6.55, 3.76, 2.48") == 6.55
    assert module.parse_uptime(" 12:29am  2 users,  load average: 0.05, 0.05, 0.06") == 0.05
    assert module.parse_uptime(
        "12:30am  up 5 days, 12:43,  1 user,  load average: 0,30, 0,10, 0,00") == 0.3
    assert module.parse_uptime("uptime: cannot open /var/run/utmp") is None


# -- user_config ---------------------------------------------------------------

@pytest.fixture
def users(tmp_path):
    home = tmp_path / "users"
    (home / "example.org" / "bob").mkdir(parents=True)
    (home / "example.org" / "bob" / "spam_threshold").write_text("# comment\n5\n\n7  \n")
    (home / "bob@example.org").mkdir()
    (home / "bob@example.org" / "greeting").write_bytes(b"hello\r\nw\xf6rld")
    return home


def user_config(app, address, name):
    return app.dispatcher.run_no_respond(None, "user_config", Address.parse(address), name)


def test_user_config_reads_every_line_unfiltered(make_app, users):
    app = make_app([f"user_config {users}/%h/%u"])
    code, values = user_config(app, "<bob@example.org>", "spam_threshold")
    assert code == OK
    assert values == (["# comment", "5", "", "7  "],)


def test_user_config_whole_address_pattern(make_app, users):
    app = make_app([f"user_config {users}/%a"])
    code, values = user_config(app, "<bob@example.org>", "greeting")
    assert code == OK
    assert values == (["hello\r", "w\udcf6rld"],)    # bytes kept as they were


def test_user_config_missing_file_or_user_declines(make_app, users):
    app = make_app([f"user_config {users}/%h/%u"])
    assert user_config(app, "<alice@example.org>", "spam_threshold") == (DECLINED, ())
    assert user_config(app, "<bob@example.org>", "nothing") == (DECLINED, ())
    assert user_config(app, "<bob@example.org>", "") == (DECLINED, ())   # a directory


@pytest.mark.parametrize("address, name", [
    ('<".."@example.org>', "spam_threshold"),
    ('<"../../etc"@example.org>', "passwd"),
    ("<bob@example.org>", "../bob/spam_threshold"),
])
def test_user_config_refuses_paths_leaving_the_directory(make_app, users, address, name):
    app = make_app([f"user_config {users}/%h/%u"], log=[])
    assert user_config(app, address, name) == (DECLINED, ())
    assert any("user_config: skip, unsafe address" in line for line in app.captured_log)


def test_user_config_unreadable_file(make_app, users):
    target = users / "example.org" / "bob" / "spam_threshold"
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    target.chmod(0)
    app = make_app([f"user_config {users}/%h/%u"])
    assert user_config(app, "<bob@example.org>", "spam_threshold") == (DECLINED, ())
    assert any("Couldn't open" in line for line in app.captured_log)


def test_user_config_default_pattern(make_app):
    app = make_app(["user_config"])
    plugin = app.dispatcher.plugins[0]
    assert plugin.pattern == "/home/%u/.qpsmtpd"
    assert user_config(app, "<nobody-here-qp@example.org>", "x") == (DECLINED, ())
