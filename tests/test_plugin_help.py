"""help: HELP answered from files, and every refusal."""

import os

import pytest


@pytest.fixture
def help_dir(tmp_path):
    directory = tmp_path / "helpfiles"
    directory.mkdir()
    (directory / "mail").write_text("MAIL FROM:<sender>\nStarts a transaction.\n")
    (directory / "data").write_text("")
    (directory / "rcpt").write_text("RCPT TO:<recipient>\n\nAfter MAIL.\r\n\n\n")
    return directory


def test_without_the_plugin_the_builtin_text(smtp_session):
    client = smtp_session([])
    reply = client.cmd("HELP")
    assert reply.code == 214
    assert reply.lines[1:] == ["See http://smtpd.develooper.com/",
                               "To report bugs or send comments, mail to "
                               "<ask@develooper.com>."]


def test_help_without_a_command(smtp_session, help_dir):
    client = smtp_session([f"help help_dir {help_dir}"])
    assert client.cmd("HELP") == (214, ["Try 'HELP COMMAND' for getting help on COMMAND"])


def test_help_file_from_help_dir(smtp_session, help_dir):
    client = smtp_session([f"help help_dir {help_dir}"])
    assert client.cmd("HELP Mail") == (214, ["MAIL FROM:<sender>", "Starts a transaction."])
    # blank lines inside the text do not end the reply; trailing ones go
    assert client.cmd("help rcpt  ") == (214, ["RCPT TO:<recipient>", " ", "After MAIL."])


def test_missing_and_empty_help_files(smtp_session, help_dir):
    client = smtp_session([f"help help_dir {help_dir}"])
    assert client.cmd("HELP vrfy") == (214, ["No help available for SMTP command: vrfy"])
    assert client.cmd("HELP DATA") == (214, ["No help available for SMTP command: data"])


@pytest.mark.parametrize("argument", ["../../../../etc/passwd", "mail from", "..",
                                      "m\u00e4il", "a/b"])
def test_names_that_are_not_one_word_are_refused(smtp_session, help_dir, argument):
    client = smtp_session([f"help help_dir {help_dir}"])
    assert client.cmd(f"HELP {argument}") == (502, ["Invalid command name"])
    assert client.cmd("NOOP").code == 250


def test_command_file_pairs(smtp_session, help_dir, tmp_path):
    other = tmp_path / "mail-help.txt"
    other.write_text("Send MAIL first.\n")
    (help_dir / "quit.txt").write_text("QUIT ends the session.\n")
    client = smtp_session([f"help help_dir {help_dir} MAIL {other} QUIT quit.txt"])
    assert client.cmd("HELP mail") == (214, ["Send MAIL first."])
    assert client.cmd("HELP QUIT") == (214, ["QUIT ends the session."])
    assert client.cmd("HELP rcpt").lines[0] == "RCPT TO:<recipient>"   # help_dir still used


def test_command_file_that_does_not_exist(smtp_session, help_dir, tmp_path):
    client = smtp_session([f"help help_dir {help_dir} NOOP {tmp_path}/nope.txt"])
    assert client.log_contains("help: No help file for command 'NOOP'")
    assert client.cmd("HELP noop") == (214, ["No help available for SMTP command: noop"])


def test_unreadable_help_file(smtp_session, help_dir):
    os.remove(help_dir / "mail")
    (help_dir / "mail").mkdir()       # exists, but cannot be read as a file
    client = smtp_session([f"help help_dir {help_dir}"])
    assert client.cmd("HELP mail") == (214, ["No help available for SMTP command: mail"])
    assert client.log_contains("(help) help: failed to open help file for mail:")


def test_invalid_arguments_are_logged_and_skipped(smtp_session, help_dir):
    client = smtp_session([f"help help_dir {help_dir} bad-key x MAIL file;rm"])
    assert client.log_contains("help: Invalid argument for the 'help' plugin bad-key")
    assert client.log_contains("help: Invalid characters in filename for command MAIL")
    assert client.cmd("HELP mail").lines == ["MAIL FROM:<sender>", "Starts a transaction."]


def test_not_implemented(smtp_session, help_dir):
    client = smtp_session([f"help not_implemented 1 help_dir {help_dir}"])
    assert client.cmd("HELP") == (502, ["Not implemented."])
    assert client.cmd("HELP mail") == (502, ["Not implemented."])
    client = smtp_session([f"help not_implemented 0 help_dir {help_dir}"])
    assert client.cmd("HELP mail").code == 214


def test_default_help_dir_is_relative_to_the_working_directory(smtp_session, tmp_path,
                                                              monkeypatch):
    (tmp_path / "help").mkdir()
    (tmp_path / "help" / "noop").write_text("NOOP does nothing.\n")
    monkeypatch.chdir(tmp_path)
    client = smtp_session(["help"])
    assert client.cmd("HELP noop") == (214, ["NOOP does nothing."])


def test_after_ehlo_replies_carry_enhanced_status_codes(smtp_session, help_dir):
    client = smtp_session([f"help help_dir {help_dir}"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("HELP mail") == (214, ["2.0.0 MAIL FROM:<sender>",
                                             "2.0.0 Starts a transaction."])


def test_odd_arguments_stop_start_up(make_app):
    from qpsmtpd.plugin import PluginError
    with pytest.raises(PluginError, match="Bad arguments"):
        make_app(["help help_dir"])
