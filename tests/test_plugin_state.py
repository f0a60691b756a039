"""One process, many connections: nothing of one session may reach the next.

A forkserver worker serves sessions one after another with the plugin
objects built once in the parent (docs/PLUGINS.md, "State"). Here one App
serves two full sessions from different clients, with most plugins that
need no outside daemon loaded at once, and the test checks that

* no plugin object changed between the end of the first session and the
  end of the second (per-process caches of configuration are filled by the
  first and stay as they are: the configuration did not change);
* the process did not change either: environment, working directory,
  umask, signal handlers, open file descriptors;
* the second session saw none of the first one's notes.

The leaks found by the audit each have their own test next to the plugin's
other tests (relay and RELAYCLIENT, rcpt_map's map, the store's connection).
"""

import os
import signal

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS

pytest_plugins = ["dns_fixtures"]

FIRST, SECOND = "192.0.2.10", "198.51.100.20"

# Attributes that are per-process measurements, not state of a session.
MEASUREMENTS = {"_load", "_measured"}

SIGNALS = [signal.SIGALRM, signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM,
           signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2]


def plugin_state(app):
    state = {}
    for plugin in app.dispatcher.plugins:
        state[plugin.name] = {name: repr(value) for name, value in vars(plugin).items()
                              if name not in MEASUREMENTS}
    return state


def process_state():
    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": umask,
        "signals": {sig: signal.getsignal(sig) for sig in SIGNALS},
        "fds": sorted(os.listdir("/proc/self/fd")),
    }


@pytest.fixture
def site(dns, make_app, tmp_path):
    dns.ptr(FIRST, "client.example.net")
    dns.ptr(SECOND, "other.example.net")
    dns.add("client.example.net", "A", FIRST)
    dns.add("other.example.net", "A", SECOND)
    dns.add("example.net", "MX", (10, "client.example.net"))
    dns.add("example.net", "TXT", f"v=spf1 ip4:{FIRST} ip4:{SECOND} -all")
    mapfile = tmp_path / "map"
    mapfile.write_text("user@example.org OK\n")
    userdir = tmp_path / "users"
    userdir.mkdir()
    plugins = [
        "connection_time", "hosts_allow",
        f"karma store sqlite:{tmp_path / 'db.sqlite'}",
        "relay", "dnsbl", "rhsbl", "fcrdns", "helo policy rfc reject 0",
        "dns_whitelist_soft", "whitelist", "earlytalker wait 0.01",
        "count_unrecognized_commands 9", "noop_counter 9",
        "badmailfrom", "badmailfromto", "badrcptto",
        "resolvable_fromhost", "sender_permitted_from",
        f"greylisting reject 0 store sqlite:{tmp_path / 'db.sqlite'}",
        "rcpt_regexp", f"rcpt_map domain example.com file {mapfile}", "rcpt_ok",
        "headers", "loop", "bogus_bounce", "uribl", "dkim", "dmarc",
        "spamassassin spamd_socket /nonexistent/spamd.sock",
        "virus/clamdscan clamd_socket /nonexistent/clamd.ctl",
        "virus/klez_filter", "help", f"user_config {userdir}/%u",
        "quit_fortune", "naughty", "content_log",
        f"queue/maildir {tmp_path / 'maildir'}",
    ]
    config = {
        **dns.config(timeout=1),
        "rcpthosts": ["example.org"], "relayclients": ["10.0.0.0/8"],
        "norelayclients": ["10.9.9.9"], "dnsbl_zones": ["bl.example"],
        "rhsbl_zones": ["rhs.example"], "uribl_zones": ["uri.example"],
        "whitelist_zones": ["wl.example"], "whitelisthosts": ["203.0.113.0/24"],
        "badmailfrom": ["bad@example.com"], "badrcptto": ["nobody@example.org"],
        "rcpt_regexp": ["/^never@/ DENY"], "hosts_allow": ["203.0.113.9 DENY"],
        "content_log_file": str(tmp_path / "content.log"),
    }
    return make_app(plugins, config, plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])


def session(smtp_session, app, ip, host):
    client = smtp_session(app=app, remote_ip=ip, remote_host=host)
    assert client.greeting.code == 220
    reply = client.send_message(
        "someone@example.net", ["user@example.org"],
        "From: someone@example.net\r\nTo: user@example.org\r\nSubject: hi\r\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <1@example.net>\r\n"
        "\r\nsee http://www.example.com/ for more\r\n.\r\n",
        helo=f"EHLO {host}")
    assert reply.code == 250, reply
    assert client.cmd("NOOP").code == 250
    assert client.cmd("QUIT").code == 221
    client.close()
    return client.session


def test_nothing_of_one_session_reaches_the_next(site, smtp_session):
    before = process_state()
    first = session(smtp_session, site, FIRST, "client.example.net")
    after_first = plugin_state(site), process_state()
    second = session(smtp_session, site, SECOND, "other.example.net")
    after_second = plugin_state(site), process_state()

    assert after_second[0] == after_first[0]
    assert after_second[1] == after_first[1]
    for key in ("environ", "cwd", "umask", "signals"):
        assert after_second[1][key] == before[key], key

    # The second session started from nothing of the first one's.
    assert second.connection is not first.connection
    assert second.connection.notes is not first.connection.notes
    assert second.connection.notes.get("karma_history", 0) == 0
    assert second.connection.remote_ip == SECOND
    first_notes, second_notes = first.connection.notes, second.connection.notes
    shared = [key for key in first_notes
              if key in second_notes and first_notes[key] is second_notes[key]
              and not isinstance(first_notes[key], (int, float, str, bool, type(None)))]
    assert shared == []
