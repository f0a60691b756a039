"""auth/auth_sqlite against a real SQLite database made by the test with the
documented schema: pbkdf2 and crypt(3) hashes, clear text for CRAM-MD5,
disabled accounts, a missing or broken database."""

import sqlite3
import warnings

import pytest

from qpsmtpd.auth import hash_password
from tls_fixtures import b64, cram_md5

SCHEMA = """
CREATE TABLE users (
    address        TEXT PRIMARY KEY COLLATE NOCASE,
    password_hash  TEXT,
    password_clear TEXT,
    active         INTEGER NOT NULL DEFAULT 1
);
"""


def sha512_crypt(password):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "config" / "auth.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        rows = [("alice@example.org", hash_password("alice pass", rounds=1000), None, 1),
                ("carol@example.org", hash_password("carol", rounds=1000), "carol", 1),
                ("old@example.org", hash_password("old", rounds=1000), None, 0),
                ("empty@example.org", None, None, 1)]
        crypted = sha512_crypt("dave pass")
        if crypted:
            rows.append(("dave@example.org", crypted, None, 1))
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", rows)
    return path


@pytest.fixture
def client(smtp_session, database):
    def factory(line="auth/auth_sqlite"):
        c = smtp_session([line], {"auth_failure_delay": "0"})
        assert c.cmd("EHLO client.example.net").code == 250
        return c
    return factory


def plain(user, password):
    return "AUTH PLAIN " + b64(f"\0{user}\0{password}")


def test_ehlo_offers_all_three(client):
    assert client().cmd("EHLO client.example.net").lines[-1] == "AUTH PLAIN LOGIN CRAM-MD5"


@pytest.mark.parametrize("user, password", [
    ("alice@example.org", "alice pass"),
    ("ALICE@example.org", "alice pass"),
    ("carol@example.org", "carol"),
    pytest.param("dave@example.org", "dave pass", marks=pytest.mark.skipif(
        sha512_crypt("x") is None, reason="no crypt module in this Python")),
])
def test_accepted(client, user, password):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (235, [f"2.7.0 PLAIN authentication successful for {user} - auth_sqlite"])
    assert c.log_contains("auth::auth_sqlite: pass, ")


@pytest.mark.parametrize("user, password, suffix", [
    ("alice@example.org", "alice", " - auth_sqlite - wrong password"),
    ("old@example.org", "old", " - auth_sqlite - account disabled"),
    ("empty@example.org", "x", " - auth_sqlite - no such user"),
    ("nobody@example.org", "x", ""),
    ("alice", "alice pass", ""),
    ("alice@example.org' OR '1'='1", "x", ""),
])
def test_refused(client, user, password, suffix):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (535, [f"5.7.8 PLAIN authentication failed for {user} from 192.0.2.10{suffix}"])


def test_cram_md5_needs_the_clear_text(client):
    c = client()
    challenge = c.cmd("AUTH CRAM-MD5").lines[0]
    assert c.cmd(cram_md5(challenge, "carol@example.org", "carol")).code == 235
    d = client()
    challenge = d.cmd("AUTH CRAM-MD5").lines[0]
    assert d.cmd(cram_md5(challenge, "alice@example.org", "alice pass")).code == 535
    assert d.log_contains("skip, CRAM-MD5 needs a clear-text password")


def test_changes_apply_at_once(client, database):
    c = client()
    assert c.cmd(plain("new@example.org", "fresh")).code == 535
    with sqlite3.connect(database) as db:
        db.execute("INSERT INTO users (address, password_hash) VALUES (?, ?)",
                   ("new@example.org", hash_password("fresh", rounds=1000)))
    assert c.cmd(plain("new@example.org", "fresh")).code == 235


def test_absolute_path_argument(client, tmp_path, database):
    moved = tmp_path / "elsewhere.sqlite"
    database.rename(moved)
    c = client(line=f"auth/auth_sqlite db {moved}")
    assert c.cmd(plain("alice@example.org", "alice pass")).code == 235


def test_missing_database_is_a_temporary_failure(client, database):
    database.unlink()
    c = client()
    assert c.cmd(plain("alice@example.org", "alice pass")) == \
        (454, ["4.7.0 Temporary authentication failure - auth_sqlite - temporary failure"])
    assert c.log_contains("error, cannot read")


def test_wrong_schema_is_a_temporary_failure(client, database):
    database.unlink()
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE accounts (name TEXT)")
    c = client()
    assert c.cmd(plain("alice@example.org", "alice pass")).code == 454
    assert c.log_contains("no such table: users")
