"""count_unrecognized_commands: 500 below the limit, 521 and a close at it."""

import pytest

from qpsmtpd.plugin import PluginError


def test_fourth_nonsense_closes_the_connection(smtp_session):
    # t/misc.t: three 500s, then 521 from count_unrecognized_commands 4
    client = smtp_session(["count_unrecognized_commands 4"])
    for _ in range(3):
        assert client.cmd("nonsense") == (500, ["Unrecognized command"])
    reply = client.cmd("nonsense")
    assert reply == (521, ["Closing connection, 4 unrecognized commands. "
                           "Perhaps you should read RFC 2821?"])
    assert client.closed()
    assert client.log_contains("(unrecognized_command) count_unrecognized_commands: "
                               "Unrecognized command 'nonsense'")
    assert client.log_contains("count_unrecognized_commands: fail, Closing connection, "
                               "4 unrecognized commands.")
    assert client.log_contains("click, disconnecting")


def test_default_limit_is_four_and_known_verbs_do_not_count(smtp_session):
    client = smtp_session(["count_unrecognized_commands"])
    assert client.cmd("GET / HTTP/1.0").code == 500
    assert client.cmd("NOOP").code == 250
    assert client.cmd("").code == 500          # empty line: verb ""
    assert client.cmd("HELO client.example.net").code == 250
    assert client.cmd("X" * 20).code == 500    # not a 1-12 character verb
    assert client.cmd("POST /").lines[0].startswith("Closing connection, 4 unrecognized")


def test_limit_one_closes_at_the_first_junk_line(smtp_session):
    client = smtp_session(["count_unrecognized_commands 1"])
    reply = client.cmd("\x01\x02 junk")
    assert reply.code == 521
    assert reply.lines[0].startswith("Closing connection, 1 unrecognized commands.")
    assert client.closed()


def test_counter_is_per_connection(smtp_session, make_app):
    app = make_app(["count_unrecognized_commands 2"])
    first = smtp_session(app=app)
    assert first.cmd("bogus").code == 500
    second = smtp_session(app=app)
    assert second.cmd("bogus").code == 500
    assert first.cmd("bogus").code == 521
    assert second.cmd("bogus").code == 521


def test_after_ehlo_the_reply_carries_an_enhanced_status_code(smtp_session):
    client = smtp_session(["count_unrecognized_commands 1"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("wibble") == (521, ["5.5.1 Closing connection, 1 unrecognized "
                                          "commands. Perhaps you should read RFC 2821?"])


def test_extra_arguments_are_ignored_with_a_warning(smtp_session):
    client = smtp_session(["count_unrecognized_commands 2 3"])
    assert client.log_contains("count_unrecognized_commands: Ignoring additional arguments.")
    assert client.cmd("x").code == 500
    assert client.cmd("x").code == 521


@pytest.mark.parametrize("limit", ["zero", "-1", "2.5"])
def test_a_bad_limit_stops_start_up(make_app, limit):
    with pytest.raises(PluginError, match="limit must be a whole number"):
        make_app([f"count_unrecognized_commands {limit}"])


def test_zero_means_the_default(smtp_session):
    client = smtp_session(["count_unrecognized_commands 0"])
    for _ in range(3):
        assert client.cmd("nonsense").code == 500
    assert client.cmd("nonsense").code == 521
