"""auth/auth_flat_file and auth/authdeny over real sessions: the file format,
case, missing passwords, an edited file, the chain with authdeny."""

import time

import pytest

from tls_fixtures import b64, cram_md5

ACCOUNTS = ["good@example.com:good_pass", "bad@example.com:bad_pass",
            "colon@example.com:pa:ss", "nopass@example.com:", "localonly:pw",
            "# a comment line", "Mixed@Example.COM:Mixed_Pass"]


@pytest.fixture
def client(smtp_session):
    def factory(plugins=("auth/auth_flat_file", "auth/authdeny"), accounts=ACCOUNTS):
        c = smtp_session(list(plugins), {"flat_auth_pw": accounts,
                                         "auth_failure_delay": "0"})
        assert c.cmd("EHLO client.example.net").code == 250
        return c
    return factory


def plain(user, password):
    return "AUTH PLAIN " + b64(f"\0{user}\0{password}")


@pytest.mark.parametrize("user, password", [
    ("good@example.com", "good_pass"),
    ("GOOD@example.COM", "good_pass"),
    ("colon@example.com", "pa:ss"),
    ("mixed@example.com", "Mixed_Pass"),
])
def test_accepted(client, user, password):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (235, [f"2.7.0 PLAIN authentication successful for {user} - auth_flat_file"])
    assert c.log_contains("auth::auth_flat_file: pass, clear-text password matches")


@pytest.mark.parametrize("user, password, suffix", [
    ("good@example.com", "Good_pass", "auth_flat_file - wrong password"),
    ("good@example.com", "good_pass ", "auth_flat_file - wrong password"),
    ("nopass@example.com", "x", "authflat - missing password"),
    ("unknown@example.com", "x", "unknown@example.com is not free to abuse my relay"),
    ("localonly", "pw", "localonly is not free to abuse my relay"),
    ("# a comment line", "x", "# a comment line is not free to abuse my relay"),
])
def test_refused(client, user, password, suffix):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (535, [f"5.7.8 PLAIN authentication failed for {user} from 192.0.2.10 - {suffix}"])
    assert c.session.connection.auth_user is None


def test_without_authdeny_an_unknown_user_fails_without_a_message(client):
    c = client(plugins=["auth/auth_flat_file"])
    assert c.cmd(plain("unknown@example.com", "x")) == \
        (535, ["5.7.8 PLAIN authentication failed for unknown@example.com from 192.0.2.10"])
    assert c.log_contains("skip, no such user: unknown@example.com")


def test_cram_md5_and_login(client):
    c = client()
    challenge = c.cmd("AUTH CRAM-MD5").lines[0]
    assert c.cmd(cram_md5(challenge, "bad@example.com", "bad_pass")).code == 235
    d = client()
    challenge = d.cmd("AUTH CRAM-MD5").lines[0]
    assert d.cmd(cram_md5(challenge, "bad@example.com", "good_pass")).lines == \
        ["5.7.8 CRAM-MD5 authentication failed for bad@example.com from 192.0.2.10 "
         "- auth_flat_file - wrong password"]
    e = client()
    e.cmd("AUTH LOGIN " + b64("bad@example.com"))
    assert e.cmd(b64("bad_pass")).code == 235


def test_an_edited_file_takes_effect_at_once(client):
    c = client()
    path = c.app.config.path("flat_auth_pw")
    assert c.cmd(plain("new@example.com", "fresh")).code == 535
    time.sleep(0.01)
    with open(path, "a") as handle:
        handle.write("new@example.com:fresh\n")
    assert c.cmd(plain("new@example.com", "fresh")).code == 235


def test_missing_file_means_nobody(client):
    c = client(accounts=[])
    assert c.cmd(plain("good@example.com", "good_pass")).code == 535


def test_authdeny_alone_advertises_everything_and_refuses_all(client):
    c = client(plugins=["auth/authdeny"])
    assert c.cmd("EHLO client.example.net").lines[-1] == "AUTH PLAIN LOGIN CRAM-MD5"
    c.cmd("AUTH LOGIN " + b64("root@example.com"))
    assert c.cmd(b64("toor")) == \
        (535, ["5.7.8 LOGIN authentication failed for root@example.com from 192.0.2.10 "
               "- root@example.com is not free to abuse my relay"])
    assert c.log_contains("auth::authdeny: fail, root@example.com is not free to abuse "
                          "my relay")
