"""The logging plugins: warn, devnull, file, syslog, adaptive, connection_id,
transaction_id.

Logging plugins come from ``config/logging`` and load before the others;
once one hooks ``logging`` the built-in output (here: ``client.log``) stays
empty. Plugins writing to stderr are read back with ``capsys``.
"""

import os
import re
import socket
import syslog
import time

import pytest

from qpsmtpd.plugin import PluginError

PID = os.getpid()
SESSION_ID = r"\d{8,}-\d{4,}-\d+"


@pytest.fixture
def logged_session(plugin_session):
    """A session with ``logging`` lines and plugins (test plugins available)."""

    def factory(logging, plugins=(), config=None):
        files = {"logging": list(logging)}
        files.update(config or {})
        client = plugin_session(list(plugins), files)
        return client.app, client
    return factory


def run_transaction(client, quit=True):
    assert client.send_message("a@example.net", ["b@example.org"],
                               "Subject: x\r\n\r\nhello\r\n.\r\n").code == 250
    if quit:
        assert client.cmd("QUIT").code == 221
    client.close()


def stderr_lines(capsys):
    return capsys.readouterr().err.splitlines()


def builtin_session_lines(client):
    """Session lines in the built-in output (config reading comes before
    the logging plugins are loaded, so that is allowed there)."""
    return [line for line in client.log
            if "Connection from" in line or "dispatching" in line]


# -- logging/warn ------------------------------------------------------------------

def test_warn_writes_the_builtin_format(logged_session, capsys):
    app, client = logged_session(["logging/warn LOGINFO"], ["count_unrecognized_commands"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("junk here").code == 500
    assert client.cmd("QUIT").code == 221
    client.close()
    err = stderr_lines(capsys)
    assert f"{PID} Connection from client.example.net [192.0.2.10]" in err
    assert f"{PID} dispatching EHLO client.example.net" in err
    assert (f"{PID} (unrecognized_command) count_unrecognized_commands: "
            "Unrecognized command 'junk'") in err
    assert f"{PID} 221 2.0.0 mx.example.org closing connection. Have a wonderful day." in err
    assert f"{PID} Loaded logging/warn LOGINFO" in err
    # nothing above the level, nothing of its own, no built-in output
    assert not any("running plugin" in line or "returned" in line for line in err)
    assert not any("Initializing logging::warn" in line for line in err)
    assert not any("dispatching" in line for line in client.log)


def test_warn_default_level_is_logwarn(logged_session, capsys):
    app, client = logged_session(["logging/warn"], ["count_unrecognized_commands 4 9"])
    assert client.cmd("QUIT").code == 221
    client.close()
    err = stderr_lines(capsys)
    assert err == [f"{PID} count_unrecognized_commands: Ignoring additional arguments."]


def test_warn_numeric_level_and_unknown_name(logged_session, capsys):
    app, client = logged_session(["logging/warn 5"])
    client.close()
    assert f"{PID} Connection from client.example.net [192.0.2.10]" in stderr_lines(capsys)
    app, client = logged_session(["logging/warn LOGLOUD"])
    client.close()
    # the warning is logged before the plugin's own hook exists: built-in output
    assert any("logging::warn: unknown log level 'LOGLOUD', using LOGWARN" in line
               for line in app.captured_log)
    assert not any("Connection from" in line for line in stderr_lines(capsys))


# -- logging/devnull -----------------------------------------------------------------

def test_devnull_silences_everything(logged_session, capsys):
    app, client = logged_session(["logging/devnull"], ["count_unrecognized_commands 9 9"])
    assert client.cmd("nonsense").code == 500
    assert client.cmd("QUIT").code == 221
    client.close()
    assert stderr_lines(capsys) == []
    assert not builtin_session_lines(client)


# -- logging/file ---------------------------------------------------------------------

HOST = re.escape(socket.gethostname())


def test_file_line_format(logged_session, tmp_path):
    path = tmp_path / "qpsmtpd.log"
    app, client = logged_session(
        [f"logging/file loglevel LOGINFO tsformat %Y-%m-%dT%H:%M:%S {path}"],
        ["count_unrecognized_commands"])
    assert client.cmd("bogus arguments").code == 500
    assert client.cmd("QUIT").code == 221
    client.close()
    lines = path.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    for message in ["Loaded logging/file loglevel LOGINFO tsformat %Y-%m-%dT%H:%M:%S "
                    + str(path),
                    "Connection from client.example.net [192.0.2.10]",
                    "dispatching bogus arguments",
                    "Unrecognized command 'bogus'",          # no hook, no plugin name
                    "500 Unrecognized command",
                    "dispatching QUIT",
                    "221 mx.example.org closing connection. Have a wonderful day.",
                    "click, disconnecting"]:
        assert any(re.fullmatch(f"{stamp} {HOST}\\[{PID}\\]: {re.escape(message)}", line)
                   for line in lines), message
    assert all(re.match(f"{stamp} {HOST}\\[{PID}\\]: ", line) for line in lines)
    assert not any("running plugin" in line or "hooking" in line for line in lines)
    assert not builtin_session_lines(client)


def test_file_default_level_and_time_format(logged_session, tmp_path):
    path = tmp_path / "warn.log"
    app, client = logged_session([f"logging/file {path}"],
                                 ["count_unrecognized_commands 4 extra"])
    client.close()
    [line] = path.read_text().splitlines()
    assert re.fullmatch(r"\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4} "
                        f"{HOST}\\[{PID}\\]: Ignoring additional arguments\\.", line)


def test_file_session_id_covers_the_whole_connection(logged_session, tmp_path):
    app, client = logged_session(
        [f"logging/file loglevel LOGINFO {tmp_path}/session-%i.log"],
        ["returns rcpt OK", "returns queue OK"])
    run_transaction(client, quit=False)
    files = sorted(p.name for p in tmp_path.glob("session-*.log"))
    session_files = [name for name in files if name != "session-parent.log"]
    assert len(session_files) == 1
    assert re.fullmatch(f"session-{SESSION_ID}\\.log", session_files[0])
    text = (tmp_path / session_files[0]).read_text()
    # after the first MAIL the original wrote to "parent" again
    for message in ["Connection from client.example.net", "dispatching EHLO",
                    "dispatching RCPT TO:<b@example.org>", "250 2.0.0 Queued",
                    "dispatching MAIL FROM:<a@example.net>"]:
        assert message in text
    parent = (tmp_path / "session-parent.log").read_text()
    assert "Loaded logging/file" in parent
    assert "dispatching" not in parent and "Connection from" not in parent


def test_file_one_file_per_connection(logged_session, smtp_session, tmp_path):
    app, first = logged_session([f"logging/file loglevel LOGINFO {tmp_path}/c-%i"])
    second = smtp_session(app=app)
    assert first.cmd("HELO one.example.net").code == 250
    assert second.cmd("HELO two.example.net").code == 250
    first.close()
    second.close()
    texts = [p.read_text() for p in tmp_path.glob("c-*") if not p.name.endswith("parent")]
    assert len(texts) == 2
    assert sorted("one.example.net" in t for t in texts) == [False, True]
    assert sorted("two.example.net" in t for t in texts) == [False, True]


def test_file_reopen_once_per_connection(logged_session, smtp_session, tmp_path):
    path = tmp_path / "r.log"
    app, client = logged_session([f"logging/file loglevel LOGINFO reopen {path}"])
    assert client.cmd("HELO one.example.net").code == 250
    client.close()
    os.rename(path, tmp_path / "r.log.1")          # what logrotate does
    client = smtp_session(app=app)
    assert client.cmd("HELO two.example.net").code == 250
    client.close()
    assert "two.example.net" in path.read_text()
    assert "two.example.net" not in (tmp_path / "r.log.1").read_text()


def test_file_without_reopen_keeps_the_open_file(logged_session, smtp_session, tmp_path):
    path = tmp_path / "k.log"
    app, client = logged_session([f"logging/file loglevel LOGINFO {path}"])
    client.close()
    os.rename(path, tmp_path / "k.log.1")
    client = smtp_session(app=app)
    assert client.cmd("HELO two.example.net").code == 250
    client.close()
    assert not path.exists()
    assert "two.example.net" in (tmp_path / "k.log.1").read_text()


@pytest.mark.parametrize("nosplit, files", [("", 2), ("nosplit ", 1)])
def test_file_nosplit_keeps_a_connection_in_one_file(logged_session, tmp_path,
                                                     nosplit, files):
    app, client = logged_session(
        [f"logging/file loglevel LOGINFO {nosplit}{tmp_path}/t-%H%M%S.log"])
    assert client.cmd("HELO client.example.net").code == 250
    time.sleep(1.1)                                  # the file name changes
    assert client.cmd("NOOP").code == 250
    client.close()
    holding = [p for p in tmp_path.glob("t-*.log") if "dispatching" in p.read_text()]
    assert len(holding) == files


def test_file_pipe_to_a_command(logged_session, tmp_path):
    target = tmp_path / "piped.log"
    app, client = logged_session([f"logging/file loglevel LOGINFO |cat >> {target}"])
    assert client.cmd("QUIT").code == 221
    client.close()
    plugin = app.dispatcher.plugins[0]
    plugin.close_output()                            # cat sees EOF and ends
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if target.exists() and "click, disconnecting" in target.read_text():
            break
        time.sleep(0.05)
    text = target.read_text()
    assert re.search(f"{HOST}\\[{PID}\\]: dispatching QUIT\n", text)


def test_file_unwritable_path_is_reported_once(logged_session, tmp_path, capsys):
    path = tmp_path / "missing-dir" / "q.log"
    app, client = logged_session([f"logging/file loglevel LOGINFO {path}"])
    for _ in range(5):
        assert client.cmd("NOOP").code == 250
    client.close()
    err = stderr_lines(capsys)
    assert err == [f"{PID} logging::file: Error opening log output to path {path}: "
                   "No such file or directory"]
    assert not builtin_session_lines(client)


def test_file_failing_outputs_remembered_are_bounded(logged_session, tmp_path, capsys):
    # One output per connection (%i) that cannot be opened, for as long as a
    # worker lives: the set of reported outputs must not grow without end.
    app, client = logged_session(
        [f"logging/file loglevel LOGINFO {tmp_path}/missing-dir/c-%i.log"])
    client.close()
    plugin = app.dispatcher.plugins[0]
    for number in range(250):
        plugin._report(f"{tmp_path}/missing-dir/c-{number}.log", "cannot open")
    assert len(plugin._reported) <= 100
    capsys.readouterr()


def test_file_missing_path_stops_start_up(make_app):
    with pytest.raises(PluginError, match="Malformed arguments to logging/file"):
        make_app([], {"logging": ["logging/file loglevel LOGINFO reopen"]})
    with pytest.raises(PluginError, match="loglevel needs a value"):
        make_app([], {"logging": ["logging/file loglevel"]})


# -- logging/syslog -------------------------------------------------------------------

@pytest.fixture
def syslog_socket():
    """A datagram socket at /dev/log, where syslog(3) sends."""
    path = "/dev/log"
    if os.path.exists(path) or os.path.islink(path):
        pytest.skip("a syslog daemon owns /dev/log; not taking it over")
    if os.geteuid() != 0:
        pytest.skip("binding /dev/log needs root (make test runs as root)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot bind {path}: {exc}")
    sock.settimeout(5)
    try:
        yield sock
    finally:
        syslog.closelog()
        sock.close()
        os.unlink(path)


def receive_until(sock, fragment):
    received = []
    while True:
        data = sock.recv(65536).decode("utf-8", "replace")
        received.append(data)
        if fragment in data:
            return data, received


@pytest.mark.parametrize("arguments, priority, ident", [
    ("loglevel LOGINFO", 16 + 6, "qpsmtpd"),
    ("loglevel 6 priority LOG_NOTICE ident qp-test", 16 + 5, "qp-test"),
    ("loglevel LOGINFO facility local0", 128 + 6, "qpsmtpd"),
])
def test_syslog_sends_to_dev_log(logged_session, syslog_socket, arguments, priority,
                                 ident):
    app, client = logged_session([f"logging/syslog {arguments}"])
    assert client.cmd("NOOP").code == 250
    data, received = receive_until(syslog_socket, "dispatching NOOP")
    assert re.fullmatch(f"<{priority}>\\w{{3}} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d "
                        f"{ident}\\[{PID}\\]: dispatching NOOP", data)
    client.close()
    assert not builtin_session_lines(client)


def test_syslog_level_filters(logged_session, syslog_socket):
    app, client = logged_session(["logging/syslog"], ["count_unrecognized_commands 3 x"])
    data, _ = receive_until(syslog_socket, "Ignoring")
    assert data.endswith(f"qpsmtpd[{PID}]: Ignoring additional arguments.")
    assert data.startswith("<20>")                   # LOG_MAIL | LOG_WARNING
    assert client.cmd("NOOP").code == 250
    syslog_socket.settimeout(0.3)
    with pytest.raises(socket.timeout):              # INFO lines are not sent
        syslog_socket.recv(65536)
    client.close()


@pytest.mark.parametrize("arguments, warning", [
    ("loglevel", "Malformed arguments to syslog plugin"),
    ("facility LOG_NOWHERE", "Error opening syslog output: unknown facility LOG_NOWHERE"),
])
def test_syslog_bad_arguments_leave_it_inactive(logged_session, arguments, warning):
    app, client = logged_session([f"logging/syslog {arguments}"])
    assert client.cmd("NOOP").code == 250
    client.close()
    assert any(line.endswith(f"logging::syslog: {warning}") for line in client.log)
    # inactive: the built-in output is still on
    assert any(line.endswith("dispatching NOOP") for line in client.log)


# -- logging/adaptive -----------------------------------------------------------------

def test_adaptive_repeats_lines_of_accepted_mail(logged_session, capsys):
    app, client = logged_session(
        ["logging/adaptive accept LOGINFO reject LOGINFO"],
        ["count_unrecognized_commands 9", "returns rcpt OK", "returns queue OK"])
    assert client.cmd("junk").code == 500
    run_transaction(client)
    err = stderr_lines(capsys)
    sender_ok = "250 2.1.0 <a@example.net>, sender OK - how exciting to get mail from you!"
    assert f"{PID} dispatching EHLO client.example.net" in err
    assert f"{PID} count_unrecognized_commands plugin: Unrecognized command 'junk'" in err
    assert f"{PID} {sender_ok}" in err
    assert f"{PID} ` {sender_ok}" in err                  # repeated: accepted
    assert f"{PID} ` dispatching RCPT TO:<b@example.org>" in err
    # kept from the connection's first line on (the hook gets the session)
    assert f"{PID} ` Connection from client.example.net [192.0.2.10]" in err
    # repeated when the transaction ends: after the queue, before its reply
    assert err.index(f"{PID} {sender_ok}") < err.index(f"{PID} ` {sender_ok}") \
        < err.index(f"{PID} 250 2.0.0 Queued")
    assert not any("running plugin" in line for line in err)
    assert not builtin_session_lines(client)


def test_adaptive_does_not_repeat_after_a_rejection(logged_session, capsys):
    app, client = logged_session(["logging/adaptive accept 6 reject 7 prefix +"],
                                 ["returns rcpt DENY no such user"])
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>") == (550, ["no such user"])
    assert client.cmd("RSET").code == 250
    assert client.cmd("MAIL FROM:<c@example.net>").code == 250
    assert client.cmd("RSET").code == 250
    client.close()
    err = stderr_lines(capsys)
    assert f"{PID} 550 no such user" in err
    assert f"{PID} running plugin (rcpt): returns" in err      # LOGDEBUG shown
    repeated = [line for line in err if line.startswith(f"{PID} + ")]
    # the HELO transaction ended (at the first MAIL) before anything was refused
    assert f"{PID} + dispatching HELO client.example.net" in repeated
    assert not any("sender OK" in line or "RCPT" in line or "c@example.net" in line
                   for line in repeated)


def test_adaptive_prefix_and_defaults(logged_session, capsys):
    app, client = logged_session(["logging/adaptive 4 6"])   # the sample's line
    plugin = app.dispatcher.plugins[0]
    assert (plugin.accept, plugin.reject, plugin.prefix) == (3, 4, "`")
    client.close()
    assert stderr_lines(capsys) == []                  # nothing at WARN or worse


def test_adaptive_odd_arguments_stop_start_up(make_app):
    with pytest.raises(PluginError, match="Bad arguments"):
        make_app([], {"logging": ["logging/adaptive accept"]})


# -- logging/connection_id and logging/transaction_id ------------------------------

def ids_of(err, fragment):
    return [line.split(" ", 1)[0] for line in err if fragment in line]


def test_connection_id_replaces_the_pid(logged_session, smtp_session, capsys):
    app, first = logged_session(["logging/connection_id LOGINFO"],
                                ["count_unrecognized_commands"])
    assert first.cmd("HELO one.example.net").code == 250
    assert first.cmd("bad").code == 500
    assert first.cmd("QUIT").code == 221
    first.close()
    second = smtp_session(app=app)
    assert second.cmd("HELO two.example.net").code == 250
    second.close()
    err = stderr_lines(capsys)
    [one] = ids_of(err, "dispatching HELO one.example.net")
    [two] = ids_of(err, "dispatching HELO two.example.net")
    assert re.fullmatch(SESSION_ID, one) and re.fullmatch(SESSION_ID, two)
    assert one != two
    assert f"{one} (unrecognized_command) count_unrecognized_commands: " \
           "Unrecognized command 'bad'" in err
    assert f"{one} click, disconnecting" in err
    # the plugin sees the session from the first line on, before the connect
    # hooks run; the daemon's own lines have no connection
    assert f"{one} Connection from client.example.net [192.0.2.10]" in err
    assert f"{two} Connection from client.example.net [192.0.2.10]" in err
    assert "??? Loaded logging/connection_id LOGINFO" in err


def test_id_plugins_share_one_session_id_per_connection(logged_session, smtp_session,
                                                        capsys):
    # connection_id writes nothing at LOGERROR; the connection's id is the
    # engine's, and transaction_id numbers within it
    app, first = logged_session(["logging/connection_id LOGERROR",
                                 "logging/transaction_id LOGINFO"])
    first.close()
    second = smtp_session(app=app)
    second.close()
    err = stderr_lines(capsys)
    ids = ids_of(err, "Connection from client.example.net")
    assert len(ids) == 2
    assert [i.rsplit(".", 1)[1] for i in ids] == ["1", "1"]
    connections = [i.rsplit(".", 1)[0] for i in ids]
    assert all(re.fullmatch(SESSION_ID, c) for c in connections)
    first_n, second_n = (int(c.rsplit("-", 1)[1]) for c in connections)
    assert second_n == first_n + 1      # one counter per process, in the engine


def test_transaction_id_counts_transactions(logged_session, capsys):
    app, client = logged_session(["logging/transaction_id 6"], ["returns rcpt OK"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("RSET").code == 250
    assert client.cmd("MAIL FROM:<c@example.net>").code == 250
    client.close()
    err = stderr_lines(capsys)
    [ehlo] = ids_of(err, "dispatching EHLO")
    [rcpt] = ids_of(err, "dispatching RCPT")
    [rset_reply] = ids_of(err, "250 2.0.0 OK")
    [second_sender] = ids_of(err, "<c@example.net>, sender OK")
    connection = ehlo.rsplit(".", 1)[0]
    assert re.fullmatch(SESSION_ID, connection)
    assert (ehlo, rcpt, rset_reply, second_sender) == (
        f"{connection}.1", f"{connection}.2", f"{connection}.3", f"{connection}.4")


def test_id_plugins_accept_level_names(logged_session, capsys):
    app, client = logged_session(["logging/transaction_id", "logging/connection_id LOGERROR"],
                                 ["count_unrecognized_commands 4 x"])
    client.close()
    err = stderr_lines(capsys)
    # WARN: transaction_id shows it, connection_id (ERROR) does not
    assert err == ["??? count_unrecognized_commands: Ignoring additional arguments."]
