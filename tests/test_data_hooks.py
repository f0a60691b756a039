"""The DATA hooks' contract for content plugins (§2.4, §3.6-§3.7):

* ``data_headers_end``: ``transaction.header`` is the parsed header block
  (a ``Header``), before any body byte is read;
* ``data_post_headers``: the complete message; our trace fields not yet
  added;
* ``data_post``: ``transaction.body_fh()`` is a new file positioned at the
  body start (the empty separator line first), independent of every other
  handle; Received and Authentication-Results are on top;
* fields added by one plugin are seen by the plugins after it and land in
  the queue, in qpsmtpd's order: data_post additions, Authentication-
  Results, Received, data_post_headers additions, the client's fields
  (with data_headers_end appends), Original-Authentication-Results.

The test plugin ``data_probe`` (tests/plugins) records what each hook shows.
"""

import re

import pytest

from conftest import RECEIVED, captured_messages

HEADER = "From: a@sender.example\r\nSubject: probe\r\n\tfolded\r\n"
BODY = "first line\r\n..dotted\r\n\r\nlast\r\n"
MESSAGE = HEADER + "\r\n" + BODY + ".\r\n"


@pytest.fixture
def session(plugin_session, queue_dir):
    def factory(probes, config=None):
        return plugin_session(["returns rcpt OK", *probes, f"capture {queue_dir}"], config)
    return factory


def send(client, text=MESSAGE):
    reply = client.send_message("a@sender.example", ["b@example.test"], text)
    assert reply.code == 250, reply
    return client.session.connection.notes["data_probe"]


def at(records, hook, plugin="data_probe"):
    [record] = [r for r in records if r["hook"] == hook and r["plugin"] == plugin]
    return record


CLIENT_FIELDS = [["From", " a@sender.example"], ["Subject", " probe\n\tfolded"]]
BODY_AS_SPOOLED = b"\nfirst line\n.dotted\n\nlast\n"


def test_data_headers_end_sees_the_parsed_header_before_the_body(session):
    records = send(session(["data_probe"]))
    record = at(records, "data_headers_end")
    assert record["header_type"] == "Header"
    assert record["fields"] == CLIENT_FIELDS
    assert record["body"] == b""  # nothing of the body has arrived yet


def test_data_post_headers_sees_the_whole_message_without_trace_fields(session):
    record = at(send(session(["data_probe"])), "data_post_headers")
    assert record["fields"] == CLIENT_FIELDS
    assert record["body"] == BODY_AS_SPOOLED


def test_data_post_body_fh_is_a_fresh_stream_at_the_body_start(session):
    records = send(session(["data_probe"]))
    record = at(records, "data_post")
    assert record["body"] == BODY_AS_SPOOLED
    assert record["second_read"] == BODY_AS_SPOOLED  # independent handles
    assert record["body_start_pos"] == len(b"From: a@sender.example\nSubject: probe\n"
                                           b"\tfolded\n")
    assert record["data_size"] == len(b"From: a@sender.example\nSubject: probe\n"
                                      b"\tfolded\n") + len(BODY_AS_SPOOLED)
    assert [name for name, _ in record["fields"]] == [
        "Authentication-Results", "Received", "From", "Subject"]


def test_reading_the_body_in_one_plugin_does_not_move_it_for_the_next(session):
    records = send(session(["data_probe", "data_probe:1"]))
    assert at(records, "data_post")["body"] == BODY_AS_SPOOLED
    assert at(records, "data_post", "data_probe_3a1")["body"] == BODY_AS_SPOOLED


def test_added_fields_are_seen_later_and_land_in_qpsmtpds_order(session, queue_dir):
    client = session(["data_probe append data_headers_end",
                      "data_probe:1 add data_post_headers",
                      "data_probe:2 add data_post",
                      "data_probe:3 add data_post"])
    text = MESSAGE.replace("Subject:", "Authentication-Results: forged.example; spf=pass\r\n"
                                       "Subject:")
    records = send(client, text)
    seen_by_last = [name for name, _ in at(records, "data_post", "data_probe_3a3")["fields"]]
    assert seen_by_last[0] == "X-data-probe-3a2"
    assert "X-data-probe" in seen_by_last and "X-data-probe-3a1" in seen_by_last
    landed = captured_messages(queue_dir)[0]
    top = (b"X-data-probe-3a3: data_post\n"
           b"X-data-probe-3a2: data_post\n"
           b"Authentication-Results: mx.example.org; auth=none\n")
    assert landed.startswith(top)
    rest = landed[len(top):]
    received = re.match(RECEIVED, rest)
    assert received, rest[:200]
    assert rest[received.end():] == (
        b"X-data-probe-3a1: data_post_headers\n"
        b"From: a@sender.example\n"
        b"Subject: probe\n\tfolded\n"
        b"X-data-probe: data_headers_end\n"
        b"Original-Authentication-Results: forged.example; spf=pass\n"
        + BODY_AS_SPOOLED)


def test_header_without_empty_line_ends_at_the_final_dot(session, queue_dir):
    records = send(session(["data_probe"]), "From: a@sender.example\r\nSubject: x\r\n.\r\n")
    record = at(records, "data_headers_end")
    assert record["fields"] == [["From", " a@sender.example"], ["Subject", " x"]]
    assert at(records, "data_post")["body"] == b""


def test_body_without_header_fields(session):
    records = send(session(["data_probe"]), "no header here\r\nsecond\r\n.\r\n")
    assert at(records, "data_headers_end")["fields"] == []
    assert at(records, "data_post")["body"] == b"no header here\nsecond\n"


@pytest.mark.parametrize("threshold", ["0", "100000"], ids=["on-disk", "in-memory"])
def test_body_fh_whether_spooled_to_disk_or_held_in_memory(session, threshold):
    records = send(session(["data_probe"], config={"size_threshold": threshold}))
    assert at(records, "data_post")["body"] == BODY_AS_SPOOLED
    assert at(records, "data_post_headers")["second_read"] == BODY_AS_SPOOLED


def test_sizes_at_each_hook(session):
    header_bytes = len(b"From: a@sender.example\nSubject: probe\n\tfolded\n")
    records = send(session(["data_probe"]))
    for hook in ("data_post_headers", "data_post"):
        record = at(records, hook)
        assert record["data_size"] == header_bytes + len(BODY_AS_SPOOLED)
        assert record["body_length"] == len(BODY_AS_SPOOLED)


def test_body_length_is_not_negative_at_data_headers_end(session):
    record = at(send(session(["data_probe"])), "data_headers_end")
    assert record["body_length"] >= 0
    assert record["data_size"] == len(b"From: a@sender.example\nSubject: probe\n\tfolded\n")
