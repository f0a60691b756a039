"""What the per-connection program loads before it serves a session.

tcpserver and inetd start ``qpsmtpd`` once per connection, so everything it
imports sits between the client's connect and the banner. A session that
needs none of argparse (options beyond ``--config-dir``), ``qpsmtpd.auth``
(no AUTH plugin), ``qpsmtpd.cdb`` (no ``.cdb`` map), ``traceback``
(nothing failed), ``hashlib``, ``typing``, ``tempfile`` or ``ssl`` (no TLS
plugin) must not load them. The daemon gets them all in its parent from
``qpsmtpd.app.warm_imports()`` before it forks.

The checks run the real program in a subprocess on a real TCP socket and
look at its ``sys.modules`` when it exits; nothing here measures time.
"""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from qpsmtpd import auth
from qpsmtpd.__main__ import parse_options

# Runs the program as ``python -m qpsmtpd`` does and writes, at exit, which
# of the watched modules were imported.
PROBE = r"""
import atexit, runpy, sys
watched, out = sys.argv[1].split(","), sys.argv[2]

def report():
    with open(out, "w") as handle:
        handle.write(" ".join(sorted(name for name in watched if name in sys.modules)))

atexit.register(report)
sys.argv = ["qpsmtpd"] + sys.argv[3:]
runpy.run_module("qpsmtpd", run_name="__main__", alter_sys=True)
"""

NOT_FOR_A_PLAIN_SESSION = (
    "argparse", "qpsmtpd.auth", "qpsmtpd.cdb", "traceback", "hashlib", "typing",
    "tempfile", "shutil", "email", "json", "subprocess", "dataclasses")
ALWAYS = ("qpsmtpd.smtp", "qpsmtpd.dispatch", "qpsmtpd.config")
WATCHED = NOT_FOR_A_PLAIN_SESSION + ALWAYS + ("ssl",)


def sample_site(tmp_path, drop=(), add=(), files=None):
    """The sample config/ in ``tmp_path`` (the program's working directory)."""
    config_dir = tmp_path / "config"
    shutil.copytree(os.path.join(ROOT, "config"), config_dir,
                    ignore=shutil.ignore_patterns("ssl"))
    lines = [line for line in (config_dir / "plugins").read_text().splitlines()
             if line.split()[:1] not in ([name] for name in drop)]
    (config_dir / "plugins").write_text("\n".join([*add, *lines]) + "\n")
    for name, text in (files or {}).items():
        (config_dir / name).write_text(text)
    return config_dir


def run_session(tmp_path, config_dir, commands=(b"QUIT",), args=None):
    """One session of the real program; returns (replies, imported modules)."""
    out = tmp_path / "modules.txt"
    args = ["--config-dir", str(config_dir)] if args is None else args
    env = dict(os.environ, PYTHONPATH=ROOT, TCPREMOTEIP="127.0.0.1",
               TCPREMOTEHOST="localhost", TCPREMOTEPORT="40000",
               TCPLOCALIP="127.0.0.1", TCPLOCALPORT="25")
    watched = ",".join(WATCHED)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        server_side, _ = listener.accept()
    with client, server_side:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, watched, str(out), *args],
            stdin=server_side, stdout=server_side, stderr=subprocess.PIPE,
            cwd=str(tmp_path), env=env)
        server_side.close()
        stream = client.makefile("rb")
        replies = [_reply(stream)]
        for command in commands:
            client.sendall(command + b"\r\n")
            replies.append(_reply(stream))
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    return replies, set(out.read_text().split())


def _reply(stream):
    lines = []
    while True:
        line = stream.readline()
        assert line, "connection closed before a reply"
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return b"\n".join(lines)


def test_sample_config_session_loads_nothing_it_does_not_use(tmp_path):
    config_dir = sample_site(tmp_path, drop=("tls",))
    replies, imported = run_session(tmp_path, config_dir,
                                    (b"EHLO client.example", b"QUIT"))
    assert replies[0].startswith(b"220 mail.example.test ESMTP")
    assert b"AUTH" not in replies[1]
    assert replies[2].startswith(b"221 ")
    assert imported >= set(ALWAYS)
    assert not imported & set(NOT_FOR_A_PLAIN_SESSION)


def test_no_ssl_without_the_tls_plugin(tmp_path):
    # qpsmtpd.lineio finds ssl in sys.modules when a TLS socket exists.
    config_dir = sample_site(tmp_path, drop=("tls",))
    _, imported = run_session(tmp_path, config_dir, (b"EHLO client.example", b"QUIT"))
    assert "ssl" not in imported


def test_option_forms_of_config_dir_need_no_argparse(tmp_path):
    config_dir = sample_site(tmp_path, drop=("tls",))
    replies, imported = run_session(tmp_path, config_dir,
                                    args=[f"--config-dir={config_dir}"])
    assert replies[0].startswith(b"220 mail.example.test ESMTP")
    assert "argparse" not in imported


def test_auth_plugin_brings_auth_but_not_the_password_hashes(tmp_path):
    config_dir = sample_site(tmp_path, drop=("tls",), add=("auth/auth_flat_file",),
                             files={"flat_auth_pw": "good@example.com:good_pass\n"})
    replies, imported = run_session(tmp_path, config_dir,
                                    (b"EHLO client.example", b"QUIT"))
    assert b"250 AUTH PLAIN LOGIN CRAM-MD5" in replies[1]
    assert "qpsmtpd.auth" in imported
    assert "hashlib" not in imported


def test_a_map_brings_cdb(tmp_path):
    from qpsmtpd.cdb import CDBWriter
    config_dir = sample_site(tmp_path, drop=("tls",))
    (config_dir / "rcpthosts").write_text("")
    with CDBWriter(str(config_dir / "morercpthosts.cdb")) as writer:
        writer.add(b"example.test", b"")
    replies, imported = run_session(
        tmp_path, config_dir,
        (b"HELO client.example", b"MAIL FROM:<a@sender.example>",
         b"RCPT TO:<bob@example.test>", b"RCPT TO:<bob@elsewhere.example>", b"QUIT"))
    assert replies[3].startswith(b"250 ")
    assert replies[4].startswith(b"550 ")
    assert "qpsmtpd.cdb" in imported


# -- the command line ---------------------------------------------------------------

@pytest.mark.parametrize("args, dirs", [
    ([], None),
    (["--config-dir", "a"], ["a"]),
    (["--config-dir=a", "--config-dir", "b"], ["a", "b"]),
    (["--conf", "a"], ["a"]),                  # abbreviations: argparse's answer
])
def test_config_dir_options(args, dirs):
    options = parse_options(args)
    assert options.config_dir == dirs
    assert not options.plugin_doc and not options.hooks


def test_other_options_still_go_through_argparse(capsys):
    assert parse_options(["--hooks", "--config-dir", "a"]).hooks is True
    assert parse_options(["--plugin-doc", "tls"]).plugin_doc == "tls"
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["--config-dir"])
    assert exit_info.value.code == 2
    assert "expected one argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_options(["--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_help_is_argparse_help(tmp_path):
    result = subprocess.run([sys.executable, "-m", "qpsmtpd", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0
    assert result.stdout.startswith("usage: qpsmtpd")
    assert "--config-dir DIR" in result.stdout


# -- what the engine decides without qpsmtpd.auth -----------------------------------

@pytest.mark.parametrize("plugins, offered", [
    ([], False),
    (["auth/auth_flat_file"], True),
])
def test_offers_auth_agrees_with_the_mechanisms(plugin_session, plugins, offered):
    client = plugin_session(plugins=plugins + ["rcpt_ok"])
    dispatcher = client.app.dispatcher
    assert dispatcher.offers_auth() is offered
    assert bool(auth.mechanisms(dispatcher)) is offered


# -- the daemon's warm-up -------------------------------------------------------------

def test_warm_imports_loads_what_sessions_load_late():
    code = ("import sys, qpsmtpd.app as app, qpsmtpd.address as address; "
            "before = address._compile.cache_info().currsize; "
            "app.warm_imports(); app.warm_imports(); "
            "wanted = ('qpsmtpd.auth', 'qpsmtpd.cdb', 'traceback', 'hashlib', 'hmac', "
            "'secrets', 'shutil'); "
            "print(before, address._compile.cache_info().currsize, "
            "all(name in sys.modules for name in wanted))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.stdout.split() == ["0", "1", "True"], result.stderr
