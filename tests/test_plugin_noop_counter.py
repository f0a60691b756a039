"""noop_counter: the third NOOP in a row closes the connection."""


def test_third_consecutive_noop_disconnects(smtp_session):
    client = smtp_session(["noop_counter"])
    assert client.cmd("NOOP") == (250, ["OK"])
    assert client.cmd("NOOP") == (250, ["OK"])
    assert client.cmd("NOOP") == (500, ["Stop wasting my time, too many consecutive NOOPs"])
    assert client.closed()
    assert client.log_contains("(noop) noop_counter: fail, 3 consecutive NOOPs")


def test_other_commands_reset_the_count(smtp_session):
    client = smtp_session(["noop_counter 2"])
    for command in ["HELO client.example.net", "RSET", "VRFY postmaster", "HELP",
                    "MAIL FROM:<a@example.net>"]:
        assert client.cmd("NOOP").code == 250
        assert client.cmd(command).code in (214, 250, 252)
    assert client.cmd("NOOP").code == 250
    assert client.cmd("NOOP").code == 500


def test_junk_and_quit_do_not_reset(smtp_session):
    client = smtp_session(["noop_counter 2"])
    assert client.cmd("NOOP").code == 250
    assert client.cmd("bogus").code == 500
    assert client.cmd("NOOP").code == 500
    assert client.closed()


def test_after_ehlo_the_reply_has_an_enhanced_code(smtp_session):
    client = smtp_session(["noop_counter 1"])
    assert client.cmd("EHLO client.example.net").code == 250
    assert client.cmd("NOOP") == (500, ["5.5.1 Stop wasting my time, too many "
                                        "consecutive NOOPs"])


def test_counts_are_per_connection(smtp_session, make_app):
    app = make_app(["noop_counter 2"])
    first, second = smtp_session(app=app), smtp_session(app=app)
    assert first.cmd("NOOP").code == 250
    assert second.cmd("NOOP").code == 250
    assert first.cmd("NOOP").code == 500
    assert second.cmd("NOOP").code == 500


def test_invalid_maximum_falls_back_to_three(smtp_session):
    client = smtp_session(["noop_counter lots"])
    assert client.log_contains("noop_counter: ignoring invalid maximum 'lots', using 3")
    assert client.cmd("NOOP").code == 250
    assert client.cmd("NOOP").code == 250
    assert client.cmd("NOOP").code == 500
