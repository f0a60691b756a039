"""auth/auth_ldap_bind against a real slapd (Debian's OpenLDAP server)
started by this module on 127.0.0.1 with a throw-away mdb database:
binds that succeed and fail, the filter escaping and empty-password fixes,
ambiguous names, a directory that is down, configuration."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from qpsmtpd.plugin import PluginError
from tls_fixtures import b64, free_port

SLAPD = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd")
                                  else None)
SLAPADD = shutil.which("slapadd") or ("/usr/sbin/slapadd"
                                      if os.path.exists("/usr/sbin/slapadd") else None)
SCHEMA = "/etc/ldap/schema"

try:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ldap3  # noqa: F401
except ImportError:
    ldap3 = None

pytestmark = [
    pytest.mark.skipif(not (SLAPD and SLAPADD), reason="slapd not installed "
                       "(Debian packages slapd, ldap-utils)"),
    pytest.mark.skipif(ldap3 is None, reason="Python package ldap3 not installed"),
]

BASE = "dc=example,dc=org"
DATA = f"""\
dn: {BASE}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{BASE}
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,{BASE}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
userPassword: alice pass

dn: uid=bob,ou=people,{BASE}
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
userPassword: {{SSHA}}PLACEHOLDER

dn: uid=twin,ou=people,{BASE}
objectClass: inetOrgPerson
uid: twin
cn: Twin One
sn: Example
userPassword: twin

dn: cn=twin2,ou=people,{BASE}
objectClass: inetOrgPerson
uid: twin
cn: twin2
sn: Example
userPassword: twin
"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slapd")
    (directory / "db").mkdir()
    port = free_port()
    config = directory / "slapd.conf"
    config.write_text(f"""\
include {SCHEMA}/core.schema
include {SCHEMA}/cosine.schema
include {SCHEMA}/inetorgperson.schema
pidfile {directory}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{BASE}"
directory {directory}/db
access to attrs=userPassword by anonymous auth by self write by * none
access to * by * read
""")
    slappasswd = shutil.which("slappasswd") or "/usr/sbin/slappasswd"
    hashed = subprocess.run([slappasswd, "-s", "bob's secret"], capture_output=True,
                            text=True)
    assert hashed.stdout.startswith("{SSHA}"), hashed.stderr
    data = DATA.replace("{SSHA}PLACEHOLDER", hashed.stdout.strip() or "bob's secret")
    (directory / "data.ldif").write_text(data)
    loaded = subprocess.run([SLAPADD, "-f", str(config), "-l", str(directory / "data.ldif")],
                            capture_output=True, text=True)
    if loaded.returncode:
        pytest.skip(f"slapadd cannot build the test directory: {loaded.stderr.strip()}")
    process = subprocess.Popen([SLAPD, "-f", str(config), "-h", f"ldap://127.0.0.1:{port}/",
                                "-d", "0"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.skip(f"slapd did not start here: {process.stderr.read()[-500:]!r}")
            time.sleep(0.05)
    yield port
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def client(smtp_session, slapd):
    def factory(args=None, config=None, plugins=()):
        files = {"auth_failure_delay": "0"}
        files.update(config or {})
        line = args if args is not None else \
            f"auth/auth_ldap_bind ldap_base {BASE} ldap_port {slapd}"
        c = smtp_session([line, *plugins], files)
        assert c.cmd("EHLO client.example.net").code == 250
        return c
    return factory


def plain(user, password):
    return "AUTH PLAIN " + b64(f"\0{user}\0{password}")


def test_ehlo_offers_plain_and_login(client):
    assert client().cmd("EHLO client.example.net").lines[-1] == "AUTH PLAIN LOGIN"


@pytest.mark.parametrize("user, password", [
    ("alice@example.org", "alice pass"),
    ("Alice@Example.ORG", "alice pass"),
    ("alice", "alice pass"),
    ("bob@example.org", "bob's secret"),          # {SSHA} stored: the server checks
])
def test_bind_succeeds(client, user, password):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (235, [f"2.7.0 PLAIN authentication successful for {user} - authldap/plain"])
    assert c.log_contains(f"pass, {user} bound as uid=")


def test_login_mechanism(client):
    c = client()
    c.cmd("AUTH LOGIN " + b64("alice@example.org"))
    assert c.cmd(b64("alice pass")) == \
        (235, ["2.7.0 LOGIN authentication successful for alice@example.org - "
               "authldap/login"])


@pytest.mark.parametrize("user, password, log", [
    ("alice@example.org", "wrong", "fail, wrong password for uid=alice"),
    ("nobody@example.org", "x", "fail, user not found: nobody"),
    ("*@example.org", "alice pass", "fail, user not found: *"),       # no wildcard
    ("al*", "alice pass", "fail, user not found: al*"),
    ("alice)(uid=*", "alice pass", "fail, user not found: alice)(uid=*"),
])
def test_refused(client, user, password, log):
    c = client()
    assert c.cmd(plain(user, password)) == \
        (535, [f"5.7.8 PLAIN authentication failed for {user} from 192.0.2.10 - "
               "authldap/plain - wrong username or password"])
    assert c.log_contains(log)
    assert not c.session.connection.relay_client


def test_empty_password_never_binds(client):
    # the engine refuses it; the plugin would too (an empty bind is anonymous)
    c = client()
    assert c.cmd(plain("alice@example.org", "")) == \
        (535, ["5.7.8 Authentication invalid"])
    plugin = c.app.dispatcher.plugins[-1]
    assert plugin.hook_auth_plain(c.session, "plain", "alice@example.org", "", None,
                                  None)[1] == "authldap/plain - wrong username or password"


def test_ambiguous_name_is_refused(client):
    c = client()
    assert c.cmd(plain("twin@example.org", "twin")) == \
        (454, ["4.7.0 Temporary authentication failure - authldap/plain - temporary "
               "auth error"])
    assert c.log_contains("twin matches several entries")


def test_directory_down_is_a_temporary_failure(client):
    c = client(args=f"auth/auth_ldap_bind ldap_base {BASE} ldap_port {free_port()} "
                    "ldap_timeout 2")
    started = time.monotonic()
    assert c.cmd(plain("alice@example.org", "alice pass")) == \
        (454, ["4.7.0 Temporary authentication failure - authldap/plain - temporary "
               "auth error"])
    assert time.monotonic() - started < 5
    assert c.log_contains("error, search for alice failed")


def test_wrong_base_finds_nobody(client, slapd):
    c = client(args=f"auth/auth_ldap_bind ldap_base dc=other,dc=org ldap_port {slapd}")
    assert c.cmd(plain("alice@example.org", "alice pass")).code == 535


def test_settings_from_the_ldap_file(client, slapd):
    c = client(args="auth/auth_ldap_bind",
               config={"ldap": [f"ldap_base {BASE}", f"ldap_port {slapd}",
                                "ldap_host 127.0.0.1", "ldap_auth_filter_attr cn"]})
    assert c.cmd(plain("Alice@example.org", "alice pass")).code == 235


def test_without_base_the_plugin_is_inactive(client):
    c = client(args="auth/auth_ldap_bind")
    assert not any(line.startswith("AUTH") for line in
                   c.cmd("EHLO client.example.net").lines)
    assert c.log_contains("please configure ldap_base; plugin inactive")


def test_bad_port_stops_the_start(make_app):
    with pytest.raises(PluginError, match="must be numbers"):
        make_app([f"auth/auth_ldap_bind ldap_base {BASE} ldap_port ldap"])
