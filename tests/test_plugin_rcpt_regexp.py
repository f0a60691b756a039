"""rcpt_regexp (config/rcpt_regexp: /regex/ or address, CONSTANT, message)
and rcpt_map (one domain's map file, default result, reload)."""

import os
import pathlib

import pytest

from qpsmtpd.connection import Connection
from qpsmtpd.plugin import PluginError
from qpsmtpd_forkserver import PreConnection

RCPT_REGEXP = [
    "# rcpt_regexp - config for rcpt_regexp plugin",
    "me@myhost.org           OK       Accepting mail",
    r"/^user\d+@doma\.in$/    OK       Accepting mail",
    "info@myhost.com         DENY     User not found.",
    "/^unused@.*/            DENY     User not found.",
    "/^temp@/                DENYSOFT Mailbox busy",
    "/^gone@/                DENY_DISCONNECT Go away",
    "/^(unclosed@/           DENY broken",
    "nocode@myhost.org",
    "bad@myhost.org          NOPE     whatever",
    "done@myhost.org         DONE     no reply at all",
    "/^bare@/                DENY",
    r"/^.*@example\.org$/    DECLINED Fall through to next rcpt plugin",
    "/^.*@example.org$/      DENY     never reached",
]


@pytest.fixture
def regexp_session(smtp_session, make_app):
    def factory(hello="EHLO client.example.net"):
        app = make_app(["rcpt_regexp", "rcpt_ok"],
                       {"rcpt_regexp": RCPT_REGEXP, "rcpthosts": ["myhost.org", "example.org"]})
        client = smtp_session(app=app)
        assert client.cmd(hello).code == 250
        assert client.cmd("MAIL FROM:<sender@example.net>").code == 250
        return client
    return factory


# -- rcpt_regexp -------------------------------------------------------------------

@pytest.mark.parametrize("recipient", ["me@myhost.org", "ME@MyHost.ORG", "user12@doma.in",
                                       "USER7@Doma.IN"])
def test_ok_lines_accept(regexp_session, recipient):
    client = regexp_session()
    assert client.cmd(f"RCPT TO:<{recipient}>").code == 250
    assert client.log_contains("(rcpt) rcpt_regexp: pass, ")
    # accepted by rcpt_regexp: rcpt_ok never ran
    assert not client.log_contains("rcpt_ok:")


@pytest.mark.parametrize("recipient, reply", [
    ("info@myhost.com", (550, ["5.7.1 User not found."])),
    ("unused@anywhere.example", (550, ["5.7.1 User not found."])),
    ("Temp@myhost.org", (450, ["4.7.1 Mailbox busy"])),
    ("bare@myhost.org", (550, ["5.7.1 relaying denied"])),   # no message: the engine's
])
def test_deny_lines(regexp_session, recipient, reply):
    client = regexp_session()
    assert client.cmd(f"RCPT TO:<{recipient}>") == reply


def test_deny_after_helo(regexp_session):
    client = regexp_session(hello="HELO client.example.net")
    assert client.cmd("RCPT TO:<info@myhost.com>") == (550, ["User not found."])
    assert client.log_contains("rcpt_regexp: fail, info@myhost.com matched info@myhost.com")


def test_deny_disconnect(regexp_session):
    client = regexp_session()
    assert client.cmd("RCPT TO:<gone@myhost.org>") == (550, ["5.7.1 Go away"])
    assert client.closed()


@pytest.mark.parametrize("recipient, code", [
    ("user@doma.in", 550),          # no digits: not matched, rcpt_ok says relaying
    ("x@example.org", 250),         # DECLINED line: rcpt_ok decides
    ("done@myhost.org", 250),       # the DONE line is refused
    ("bad@myhost.org", 250),        # so is the unknown constant
    ("nocode@myhost.org", 250),     # and the line without a constant
])
def test_fall_through_to_later_plugins(regexp_session, recipient, code):
    client = regexp_session()
    assert client.cmd(f"RCPT TO:<{recipient}>").code == code
    assert client.log_contains("rcpt_ok:")


def test_bad_lines_are_logged(regexp_session):
    client = regexp_session()
    client.cmd("RCPT TO:<nobody@myhost.org>")
    assert client.log_contains("REGEXP '^(unclosed@' not valid")
    assert client.log_contains("rcpt_regexp - no return code")
    assert client.log_contains("rcpt_regexp - 'NOPE' is not a valid constant, ignoring this line")
    assert client.log_contains("rcpt_regexp - 'DONE' is not a valid constant, ignoring this line")


def test_no_domain_is_not_checked(regexp_session):
    client = regexp_session()
    assert client.cmd("RCPT TO:<postmaster>").code == 250


# -- rcpt_map ----------------------------------------------------------------------

MAP = [
    "# example_org_map - config for rcpt_map plugin",
    "me@example.org       OK",
    "You@Example.org      OK",
    "info@example.org     DENY      User not found.",
    "temp@example.org     DENYSOFT",
    "broken@example.org",
    "weird@example.org    NOPE",
    "",
]


def write_map(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def map_file(tmp_path):
    return write_map(tmp_path / "map_example_org", MAP)


@pytest.fixture
def map_session(smtp_session, make_app):
    def factory(plugins, hello="EHLO client.example.net", app=None):
        app = app or make_app(list(plugins) + ["rcpt_ok"],
                              {"rcpthosts": ["example.org", "example.net"]})
        client = smtp_session(app=app)
        assert client.cmd(hello).code == 250
        assert client.cmd("MAIL FROM:<sender@example.com>").code == 250
        return client
    return factory


@pytest.mark.parametrize("recipient, reply", [
    ("me@example.org", (250, ["2.1.5 <me@example.org>, recipient ok"])),
    ("you@EXAMPLE.org", (250, ["2.1.5 <you@EXAMPLE.org>, recipient ok"])),
    ("info@example.org", (550, ["5.7.1 User not found."])),
    ("temp@example.org", (450, ["4.7.1 No such user."])),
    ("nobody@example.org", (550, ["5.7.1 No such user."])),        # the default
    ("broken@example.org", (550, ["5.7.1 No such user."])),        # bad line: not in map
    ("nobody@example.net", (250, ["2.1.5 <nobody@example.net>, recipient ok"])),
])
def test_map(map_session, map_file, recipient, reply):
    client = map_session([f"rcpt_map domain Example.ORG file {map_file}"])
    assert client.cmd(f"RCPT TO:<{recipient}>") == reply


def test_map_after_helo_and_logs(map_session, map_file):
    client = map_session([f"rcpt_map domain example.org file {map_file}"],
                         hello="HELO client.example.net")
    assert client.cmd("RCPT TO:<nobody@example.org>") == (550, ["No such user."])
    assert client.log_contains("rcpt_map: fail, nobody@example.org not in map")
    assert client.log_contains(f"No constant in line 6 in {map_file}")
    assert client.log_contains(f"Not a valid constant in line 7 in {map_file}")


def test_default_argument(map_session, map_file):
    client = map_session([f"rcpt_map domain example.org file {map_file} "
                          "default DENYSOFT=Try_again_later"])
    assert client.cmd("RCPT TO:<nobody@example.org>") == (450, ["4.7.1 Try again later"])
    assert client.cmd("RCPT TO:<me@example.org>").code == 250


def test_two_domains_keep_their_own_maps(map_session, map_file, tmp_path):
    other = write_map(tmp_path / "map_example_net", ["sales@example.net OK"])
    client = map_session([f"rcpt_map domain example.org file {map_file}",
                          f"rcpt_map:1 domain example.net file {other}"])
    assert client.cmd("RCPT TO:<me@example.org>").code == 250
    assert client.cmd("RCPT TO:<sales@example.net>").code == 250
    assert client.cmd("RCPT TO:<me@example.net>").code == 550
    assert client.cmd("RCPT TO:<sales@example.org>").code == 550


def bump_mtime(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_reload_in_pre_connection(map_session, map_file, make_app):
    app = make_app([f"rcpt_map domain example.org file {map_file}", "rcpt_ok"],
                   {"rcpthosts": ["example.org"]})
    plugin = app.dispatcher.plugins[0]

    def forkserver_accepts():
        connection = Connection(remote_ip="192.0.2.10")
        info = {"remote_ip": "192.0.2.10", "remote_port": 40000, "local_ip": "192.0.2.1",
                "local_port": 25, "max_conn_ip": 0, "child_addrs": []}
        app.dispatcher.run_hooks(PreConnection(app, connection), "pre-connection", info)

    write_map(pathlib.Path(map_file), ["new@example.org OK"])
    bump_mtime(map_file)
    assert "new@example.org" not in plugin.map
    forkserver_accepts()     # the parent re-reads it, so new workers start with it
    assert "new@example.org" in plugin.map
    client = map_session([], app=app)
    assert client.cmd("RCPT TO:<new@example.org>").code == 250
    assert client.cmd("RCPT TO:<me@example.org>").code == 550

    # an emptied map keeps the previous one
    write_map(pathlib.Path(map_file), ["# nothing"])
    bump_mtime(map_file)
    forkserver_accepts()
    assert any(f"empty map file {map_file}; keeping the previous map" in line
               for line in app.captured_log)
    client = map_session([], app=app)
    assert client.cmd("RCPT TO:<new@example.org>").code == 250


def test_a_reused_worker_sees_an_edited_map(map_session, map_file, make_app):
    # One process serving connection after connection, no pre-connection
    # hook in between (that runs in the forkserver's parent): the second
    # connection must still see the map as it is now.
    app = make_app([f"rcpt_map domain example.org file {map_file}", "rcpt_ok"],
                   {"rcpthosts": ["example.org"]})
    first = map_session([], app=app)
    assert first.cmd("RCPT TO:<me@example.org>").code == 250
    assert first.cmd("RCPT TO:<new@example.org>").code == 550
    first.cmd("QUIT")
    write_map(pathlib.Path(map_file), ["new@example.org OK"])
    bump_mtime(map_file)
    second = map_session([], app=app)
    assert second.cmd("RCPT TO:<new@example.org>").code == 250
    assert second.cmd("RCPT TO:<me@example.org>").code == 550


@pytest.mark.parametrize("args, error", [
    ("domain example.org", "No map file given"),
    ("file {map}", "No domain name given"),
    ("domain example.org file {missing}", "ERROR opening"),
    ("domain example.org file {empty}", "Empty map file"),
    ("domain example.org file {map} default NOPE=x", "Not a valid constant for 'default' arg"),
    ("domain example.org file", "Bad arguments"),
])
def test_bad_arguments_stop_start_up(make_app, map_file, tmp_path, args, error):
    empty = write_map(tmp_path / "empty_map", ["# no entries"])
    line = "rcpt_map " + args.format(map=map_file, missing=tmp_path / "nope", empty=empty)
    with pytest.raises(PluginError, match=error):
        make_app([line])
