"""greylisting: the black/grey/white state machine on SQLite and on a real
redis-server with a fake clock (nobody sleeps), the triplet choices,
deny_late, the exemptions, per-recipient opt-in/opt-out, and two real
daemons sharing one Redis."""

import smtplib

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd.plugin import PluginError
from qpsmtpd.store import FAKE_CLOCK_ENV, ip_key, open_store
from store_fixtures import (  # noqa: F401
    fake_clock, redis_server, shift_clock_file, store_url, write_evidence_plugin)
from forkserver_fixtures import Daemon

DENIED = "This mail is temporarily denied"
IP = "198.51.100.7"


@pytest.fixture
def site(make_app, smtp_session, tmp_path):
    evidence = write_evidence_plugin(tmp_path / "testplugins")

    def build(store, *plugins, **files):
        config = {"rcpthosts": ["example.org"], "store": store}
        config.update(files)
        app = make_app(list(plugins) + ["rcpt_ok", f"capture {tmp_path / 'queue'}"], config,
                       plugin_dirs=[evidence, TEST_PLUGINS, PLUGIN_DIR])

        def connect(remote_ip=IP, **connection):
            return smtp_session(app=app, remote_ip=remote_ip, **connection)
        return connect
    return build


@pytest.fixture
def url(tmp_path):
    return f"sqlite:{tmp_path / 'grey.sqlite'}"


def mail(connect, sender="a@example.net", recipient="b@example.org", **connection):
    """One attempt: the MAIL reply (and, when accepted, RCPT and the
    message); returns the first refusal or the final reply."""
    client = connect(**connection)
    try:
        client.cmd("EHLO client.example.net")
        reply = client.cmd(f"MAIL FROM:<{sender}>")
        if reply.code != 250:
            return reply
        reply = client.cmd(f"RCPT TO:<{recipient}>")
        if reply.code != 250:
            return reply
        reply = client.cmd("DATA")
        if reply.code != 354:
            return reply
        client.send("Subject: hi\r\n\r\nbody\r\n.\r\n")
        return client.reply()
    finally:
        client.cmd("QUIT")
        client.close()


def log(connect_or_client, fragment):
    return any(fragment in line for line in connect_or_client.log)


# -- the state machine, both backends -----------------------------------------------

def test_black_grey_white(site, store_url, fake_clock):
    connect = site(store_url, "greylisting")
    assert mail(connect) == (450, [f"4.7.1 {DENIED}"])
    fake_clock.advance(60)
    assert mail(connect) == (450, [f"4.7.1 {DENIED}"])      # still black
    fake_clock.advance(3000 - 60)
    assert mail(connect).code == 250                         # grey -> white
    fake_clock.advance(20 * 86400)
    assert mail(connect).code == 250                         # white
    fake_clock.advance(36 * 86400 - 1)
    assert mail(connect).code == 250                         # white, renewed
    fake_clock.advance(36 * 86400)
    assert mail(connect).code == 450                         # white timed out
    value = open_store(store_url, "greylisting").get(ip_key(IP))
    # black again from now (the counters may have expired with the entry)
    assert value.startswith(f"{int(fake_clock.now)}:") and value.endswith(":0")


def test_retry_after_the_grey_period_starts_again(site, store_url, fake_clock):
    connect = site(store_url, "greylisting black_timeout 600 grey_timeout 3600")
    assert mail(connect).code == 450
    fake_clock.advance(3601)
    assert mail(connect).code == 450
    fake_clock.advance(599)
    assert mail(connect).code == 450
    fake_clock.advance(2)
    assert mail(connect).code == 250


def test_log_lines(site, url, fake_clock):
    connect = site(url, "greylisting")
    client = connect()
    client.cmd("EHLO x")
    client.cmd("MAIL FROM:<a@example.net>")
    client.cmd("MAIL FROM:<a@example.net>")
    fake_clock.advance(3000)
    client.cmd("MAIL FROM:<a@example.net>")
    client.cmd("RSET")
    client.cmd("MAIL FROM:<a@example.net>")
    client.close()
    for line in ("(mail) greylisting: fail, initial DENYSOFT, unknown",
                 "(mail) greylisting: fail, black DENYSOFT - 1 deferred connections",
                 "(mail) greylisting: pass, updated grey->white",
                 "(mail) greylisting: pass, white, 2 deliveries"):
        assert log(client, line), line


# -- the triplet ---------------------------------------------------------------------

def test_ip_only_by_default(site, url, fake_clock):
    connect = site(url, "greylisting")
    assert mail(connect).code == 450
    fake_clock.advance(3000)
    assert mail(connect, sender="other@example.com", recipient="c@example.org").code == 250
    assert mail(connect, remote_ip="198.51.100.8").code == 450


def test_sender_and_recipient_triplet(site, url, fake_clock):
    connect = site(url, "greylisting sender 1 recipient 1")
    reply = mail(connect)
    assert reply == (450, [f"4.7.1 {DENIED}"])            # refused at RCPT
    fake_clock.advance(3000)
    assert mail(connect).code == 250
    assert mail(connect, recipient="c@example.org").code == 450
    assert mail(connect, sender="z@example.net").code == 450
    store = open_store(url, "greylisting")
    assert store.get(f"{ip_key(IP)}:a@example.net:b@example.org").endswith(":1")


def test_null_sender_is_deferred_to_data(site, url):
    connect = site(url, "greylisting recipient 1")
    client = connect()
    client.cmd("EHLO x")
    assert client.cmd("MAIL FROM:<>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250   # probes still work
    assert client.cmd("DATA") == (451, [f"4.7.1 {DENIED}"])
    client.close()


def test_deny_late(site, url):
    connect = site(url, "greylisting deny_late 1")
    client = connect()
    client.cmd("EHLO x")
    assert client.cmd("MAIL FROM:<a@example.net>").code == 250
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("DATA") == (451, [f"4.7.1 {DENIED}"])
    client.close()


def test_no_triplet_part_is_an_error_not_a_refusal(site, url):
    connect = site(url, "greylisting remote_ip 0")
    assert mail(connect).code == 250
    assert any("enable one of remote_ip, sender, or recipient!" in l
               for l in connect().log)


# -- exemptions -----------------------------------------------------------------------

def test_reject_0_tracks_without_delaying(site, url):
    connect = site(url, "greylisting reject 0")
    assert mail(connect).code == 250
    assert open_store(url, "greylisting").get(ip_key(IP)) is not None
    assert any("fail, tolerated, initial DENYSOFT, unknown" in l for l in connect().log)


def test_relay_clients_and_whitelisted_hosts_pass(site, url):
    connect = site(url, "whitelist", "greylisting", whitelisthosts=["198.51.100.9"])
    assert mail(connect, relay_client=True).code == 250
    assert mail(connect, remote_ip="198.51.100.9").code == 250
    assert mail(connect).code == 450


def test_exclude_files(site, url):
    connect = site(url, "greylisting",
                   greylist_exclude_files=["postgrey_whitelist_clients", "missing_file"],
                   postgrey_whitelist_clients=["# comment", "192.0.2.5", "203.0.113.0/24",
                                               "mail.example.com", "/^smtp\\d+\\.bank\\./",
                                               "not an entry at all"])
    assert mail(connect, remote_ip="192.0.2.5").code == 250
    assert mail(connect, remote_ip="203.0.113.77").code == 250
    assert mail(connect, remote_ip="192.0.2.6", remote_host="out.mail.example.com").code == 250
    assert mail(connect, remote_ip="192.0.2.7", remote_host="smtp3.bank.example").code == 250
    assert mail(connect, remote_ip="192.0.2.8", remote_host="evilmail.example.com").code == 450
    assert log(connect(), "greylisting: skip, excluded by postgrey_whitelist_clients")


@pytest.mark.parametrize("p0f, code", [
    ("genre:Windows,detail:7 or 8", 450),
    ("genre:Linux,link:DSL", 450),
    ("genre:Linux,distance:12", 450),
    ("genre:Linux,distance:2,link:Ethernet", 250),
])
def test_p0f_condition(site, url, p0f, code):
    connect = site(url, f"evidence p0f {p0f.replace(' ', '_')}",
                   "greylisting p0f genre,windows,link,dsl,distance,3")
    assert mail(connect).code == code


def test_p0f_condition_without_p0f_info_does_not_greylist(site, url):
    connect = site(url, "greylisting p0f genre,windows")
    assert mail(connect).code == 250
    assert log(connect(), "greylisting: skip, p0f info missing")


def test_geoip_countries_are_never_greylisted(site, url):
    connect = site(url, "evidence note.geoip_country US note.geoip_country_name United_States",
                   "greylisting geoip CA,us")
    assert mail(connect).code == 250
    connect = site(url, "evidence note.geoip_country CN", "greylisting geoip CA,US")
    assert mail(connect).code == 450


def test_whitelisted_recipients_pass_the_late_check(site, url):
    connect = site(url, "whitelist", "greylisting deny_late 1", whitelistrcpt=["b@example.org"])
    assert mail(connect).code == 250
    assert log(connect(), "(data) greylisting: skip, all recipients whitelisted")


# -- per-recipient configuration -----------------------------------------------------------

@pytest.fixture
def per_recipient(tmp_path):
    homes = tmp_path / "homes"
    for user, lines in {"optout": "reject 0\n", "off": "mode off\n",
                        "optin": "reject 1\n", "quick": "black_timeout 10\n"}.items():
        (homes / user).mkdir(parents=True)
        (homes / user / "denysoft_greylist").write_text(lines)
    return f"user_config {homes}/%u"


def test_per_recipient_opt_out(site, url, per_recipient, fake_clock):
    connect = site(url, per_recipient, "greylisting per_recipient 1")
    assert mail(connect, recipient="b@example.org").code == 450
    assert mail(connect, remote_ip="198.51.100.20", recipient="optout@example.org").code == 250
    assert open_store(url, "greylisting").get(ip_key("198.51.100.20")) is not None
    assert mail(connect, remote_ip="198.51.100.21", recipient="off@example.org").code == 250
    assert open_store(url, "greylisting").get(ip_key("198.51.100.21")) is None
    assert mail(connect, remote_ip="198.51.100.22", recipient="quick@example.org").code == 450
    fake_clock.advance(11)
    assert mail(connect, remote_ip="198.51.100.22", recipient="quick@example.org").code == 250


def test_per_recipient_opt_in(site, url, per_recipient):
    connect = site(url, per_recipient, "greylisting per_recipient 1 reject 0")
    assert mail(connect, recipient="b@example.org").code == 250
    assert mail(connect, remote_ip="198.51.100.30", recipient="optin@example.org").code == 450


def test_site_wide_denysoft_greylist_file(site, url, fake_clock):
    connect = site(url, "greylisting", denysoft_greylist=["black_timeout 60", "sender 1",
                                                          "bogus_key 1"])
    assert mail(connect).code == 450
    fake_clock.advance(61)
    assert mail(connect).code == 250
    assert mail(connect, sender="x@example.net").code == 450
    assert log(connect(), "greylisting: invalid parameter(s): bogus_key")


def test_legacy_mode_testonly(site, url):
    connect = site(url, "greylisting mode testonly")
    assert mail(connect).code == 250


# -- bad input, broken store ------------------------------------------------------------------

@pytest.mark.parametrize("line", ["greylisting black_timeout soon", "greylisting sender",
                                  "greylisting store ftp://x"])
def test_bad_arguments_stop_the_start(make_app, url, line):
    with pytest.raises(PluginError):
        make_app([line], {"store": url})


def test_unreachable_redis_lets_mail_through(site, tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connect = site(f"sqlite:{tmp_path / 'unused.sqlite'}", f"greylisting redis 127.0.0.1:{port}")
    assert mail(connect).code == 250
    assert log(connect(), "(mail) greylisting: error, store: ")


def test_legacy_redis_argument(site, redis_server, fake_clock, tmp_path):
    redis_server.flush()
    host = redis_server.url[len("redis://"):]
    connect = site(f"sqlite:{tmp_path / 'unused.sqlite'}", f"greylisting redis {host}")
    assert mail(connect).code == 450
    assert open_store(redis_server.url + "/0", "greylisting").get(ip_key(IP)) is not None


# -- two real daemons, one Redis, shifted clocks ----------------------------------------------

def smtp_attempt(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.net")
        code, _ = client.mail("alice@sender.example")
        if code != 250:
            return code
        code, _ = client.rcpt("bob@example.test")
        return code


def test_two_daemons_share_one_greylist(tmp_path, redis_server):
    redis_server.flush()
    offset = tmp_path / "clock-offset"
    shift_clock_file(offset, 0)
    plugins = ("greylisting", "rcpt_ok")
    config = {"store": redis_server.url + "/0"}
    clock = {FAKE_CLOCK_ENV: str(offset)}
    first = Daemon(tmp_path / "mx1", plugins=plugins, config=config, args=("--no-rdns",),
                   extra_env=clock)
    second = Daemon(tmp_path / "mx2", plugins=plugins, config=config, args=("--no-rdns",),
                    extra_env=clock)
    try:
        assert smtp_attempt(first.port) == 450
        assert smtp_attempt(second.port) == 450            # same triplet, still black
        shift_clock_file(offset, 3001)
        assert smtp_attempt(second.port) == 250            # grey -> white on mx2
        assert smtp_attempt(first.port) == 250             # mx1 sees it white
        assert "pass, white, 2 deliveries" in first.log()
        assert "test clock active" in first.log()
        shift_clock_file(offset, 3001 + 37 * 86400)
        assert smtp_attempt(first.port) == 450             # white timed out everywhere
    finally:
        first.stop()
        second.stop()


def test_arguments_beat_the_site_file_for_every_recipient(site, url, per_recipient):
    connect = site(url, per_recipient, "greylisting per_recipient 1 reject 0",
                   denysoft_greylist=["reject 1"])
    assert mail(connect, recipient="nobody-special@example.org").code == 250
    assert mail(connect, remote_ip="198.51.100.40", recipient="optin@example.org").code == 450
