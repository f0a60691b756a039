"""The real content-filter daemons for the tests: spamd and clamd.

``spamd`` and ``clamd`` are session fixtures: each daemon is started once
per test session (the first test that asks for it pays the start-up, which
is measured and printed) and stopped when the session ends. A test module
uses them by importing the fixture names::

    from daemon_fixtures import clamd, spamd  # noqa: F401 (fixtures)

Importing a fixture into several modules makes pytest build one fixture per
module, so the daemons live in a per-process registry and every copy of the
fixture gets the same running daemon.

Both listen on 127.0.0.1 on an ephemeral port **and** on a unix socket in
their own temporary directory; nothing outside that directory is read or
written (no Bayes database, no auto-learning, no network tests, no
$HOME). When the Debian program is absent the tests that need it skip,
naming the package; a daemon that is installed but does not start fails
the test with its log.

* spamd (Debian ``spamd``/``spamassassin``): SpamAssassin's stock rules from
  ``/usr/share/spamassassin``, the ``.pre`` files of ``/etc/spamassassin``,
  and a ``local.cf`` that turns off Bayes, auto-learning and DNS. Per-user
  preferences come from ``<dir>/users/<user>/user_prefs``
  (``SpamdDaemon.set_user_prefs``). As root it runs as ``nobody``.
* clamd (Debian ``clamav-daemon``): a database directory holding only a
  signature the fixture writes itself, ``Eicar-Test-Signature`` for the
  EICAR test string (the official databases cannot be downloaded here);
  clamd reports it as ``Eicar-Test-Signature.UNOFFICIAL``.
  ``StreamMaxLength`` is 100 MB so large messages can be streamed.
"""

import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

EICAR = (rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!"
         rb"$H+H*")
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

START_TIMEOUT = 90  # seconds; spamd compiles its rules at start

# SpamAssassin site configuration: deterministic scores, nothing written.
SPAMD_LOCAL_CF = """\
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""

_running = {}  # name -> daemon object, shared by every copy of a fixture


def _die_with_parent():
    """In the child before exec: SIGTERM when the test process dies, so a
    killed test run leaves no daemon behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def find_program(name):
    """The program's path (PATH, then /usr/sbin for a non-root PATH) or None."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Daemon:
    """A daemon process in its own temporary directory."""

    name = "daemon"

    def __init__(self):
        reap_stale(self.name)
        self.dir = tempfile.mkdtemp(prefix=f"qpsmtpd-test-{self.name}-")
        os.chmod(self.dir, 0o755)  # spamd drops to nobody and must read it
        with open(os.path.join(self.dir, "owner"), "w") as handle:
            handle.write(str(os.getpid()))
        self.pid_file = os.path.join(self.dir, f"{self.name}.pid")
        self.port = free_port()
        self.socket_path = os.path.join(self.dir, f"{self.name}.sock")
        self.log_path = os.path.join(self.dir, f"{self.name}.log")
        self.proc = None
        self.startup_seconds = None

    def start(self):
        command = self.command()
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_text()
                self.stop()
                pytest.fail(f"{self.name} exited with {self.proc.returncode} at "
                            f"start:\n{log}")
            if self.ready():
                self.startup_seconds = time.monotonic() - started
                print(f"\n{self.name} ready in {self.startup_seconds:.2f} s")
                return self
            time.sleep(0.05)
        log = self.log_text()
        self.stop()
        pytest.fail(f"{self.name} did not answer within {START_TIMEOUT} s:\n{log}")

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        """SIGTERM the daemon's process group, then SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self):
        raise NotImplementedError

    def ready(self):
        raise NotImplementedError


class SpamdDaemon(_Daemon):
    """spamd on ``127.0.0.1:<port>`` and on ``<dir>/spamd.sock``."""

    name = "spamd"

    def __init__(self, program):
        super().__init__()
        self.program = program
        self.site_dir = os.path.join(self.dir, "site")
        self.users_dir = os.path.join(self.dir, "users")
        self.home_dir = os.path.join(self.dir, "home")
        for directory in (self.site_dir, self.users_dir, self.home_dir):
            os.mkdir(directory)
            os.chmod(directory, 0o755)
        if os.path.isdir("/etc/spamassassin"):
            for name in os.listdir("/etc/spamassassin"):
                if name.endswith(".pre"):
                    shutil.copy(os.path.join("/etc/spamassassin", name), self.site_dir)
        with open(os.path.join(self.site_dir, "local.cf"), "w") as handle:
            handle.write(SPAMD_LOCAL_CF)
        for name in os.listdir(self.site_dir):
            os.chmod(os.path.join(self.site_dir, name), 0o644)

    @property
    def address(self):
        """The plugin's ``spamd_socket`` value for the TCP listener."""
        return f"127.0.0.1:{self.port}"

    def command(self):
        command = [self.program, "--siteconfigpath", self.site_dir,
                   "--helper-home-dir", self.home_dir,
                   "--nouser-config",
                   f"--virtual-config-dir={self.users_dir}/%u",
                   "--local", "--syslog=stderr",
                   f"--listen=127.0.0.1:{self.port}", f"--listen={self.socket_path}",
                   "--socketmode=0666", "--min-children=1", "--max-children=3",
                   "--pidfile", self.pid_file]
        if os.geteuid() == 0:
            command += ["--username", "nobody"]
        return command

    def ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in sock.recv(100)
        except OSError:
            return False

    def set_user_prefs(self, user, text):
        """Write ``users/<user>/user_prefs`` (read by spamd per message)."""
        directory = os.path.join(self.users_dir, user)
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "user_prefs")
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)


class ClamdDaemon(_Daemon):
    """clamd on ``127.0.0.1:<port>`` and on ``<dir>/clamd.sock`` with a
    one-signature database."""

    name = "clamd"

    def __init__(self, program):
        super().__init__()
        self.program = program
        self.database_dir = os.path.join(self.dir, "db")
        os.mkdir(self.database_dir)
        # A body signature (.ndb, target type 0 = any file) matches the
        # EICAR string wherever it is: in a text part or a decoded attachment.
        with open(os.path.join(self.database_dir, "qpsmtpd-test.ndb"), "w") as handle:
            handle.write(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
        self.config_path = os.path.join(self.dir, "clamd.conf")
        with open(self.config_path, "w") as handle:
            handle.write(self.config_text())

    def config_text(self):
        # No "User": as root clamd keeps running as root, which is fine for
        # a test; the plugins stream the message, so clamd needs no access
        # to the spool either way.
        return "\n".join([
            "Foreground yes",
            f"LocalSocket {self.socket_path}",
            "LocalSocketMode 666",
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"DatabaseDirectory {self.database_dir}",
            f"LogFile {self.log_path}",
            f"PidFile {self.pid_file}",
            "StreamMaxLength 100M",
            "MaxFileSize 100M",
            "Bytecode no",
            "SelfCheck 0",
            "",
        ])

    def command(self):
        return [self.program, "--config-file", self.config_path]

    def ready(self):
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.socket_path)
                sock.sendall(b"zPING\0")
                return sock.recv(100) == b"PONG\0"
        except OSError:
            return False


def reap_stale(name):
    """Stop the daemons that an earlier, killed test run left behind.

    Only directories of this module's kind (``qpsmtpd-test-<name>-*``) whose
    owning test process is gone are touched; the daemon's pid comes from its
    own pid file and must be running with that directory on its command
    line. (clamd follows its parent through PR_SET_PDEATHSIG; spamd changes
    credentials, which clears that, so it can outlive a killed run.)
    """
    pattern = os.path.join(tempfile.gettempdir(), f"qpsmtpd-test-{name}-*")
    for directory in glob.glob(pattern):
        try:
            with open(os.path.join(directory, "owner")) as handle:
                owner = int(handle.read())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        try:
            with open(os.path.join(directory, f"{name}.pid")) as handle:
                pid = int(handle.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                ours = directory.encode() in handle.read()
        except (OSError, ValueError, IndexError):
            ours = False
        if ours:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _shared(name, factory):
    daemon = _running.get(name)
    if daemon is None:
        daemon = _running[name] = factory().start()
    return daemon


def stop_all():
    while _running:
        _, daemon = _running.popitem()
        daemon.stop()


@pytest.fixture(scope="session")
def spamd(request):
    program = find_program("spamd")
    if not program:
        pytest.skip("spamd (Debian packages spamd, spamassassin) not installed; "
                    "`make test` installs it as root")
    request.addfinalizer(stop_all)
    return _shared("spamd", lambda: SpamdDaemon(program))


@pytest.fixture(scope="session")
def clamd(request):
    program = find_program("clamd")
    if not program:
        pytest.skip("clamd (Debian package clamav-daemon) not installed; "
                    "`make test` installs it as root")
    request.addfinalizer(stop_all)
    return _shared("clamd", lambda: ClamdDaemon(program))
