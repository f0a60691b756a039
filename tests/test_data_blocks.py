"""DATA read in blocks (qpsmtpd/smtp.py ``_receive_body``): the rules of
the line-by-line reader hold wherever the client's packets, and so the
server's reads, happen to end.

Past the header the message is read in blocks of whatever one read
brings. These tests cut what they send at chosen offsets and wait, after
each piece, until the server's DATA reader has taken every byte sent so far
(``Blocks`` counts what ``LineIO.read_block`` returned), so a block ends
exactly at each cut: the final ``<CR><LF>.<CR><LF>`` split at every
offset, a dot-stuffed line, a bare CR or LF, a line longer than a block,
``max_data_line_length`` and ``databytes`` crossed inside a block, commands
pipelined behind the final dot, a 5 MB message stored byte for byte, and
random messages in random pieces compared with what an independent model
of the line-by-line reader says lands in the queue.
"""

import os
import socket
import threading
import time

import pytest

from conftest import Client, captured_messages, spool_files, strip_trace
from hardening_fixtures import build_app, queued_files, queued_number
from qpsmtpd.connection import Connection
from qpsmtpd.lineio import LineIO
from qpsmtpd.smtp import DATA_PIECE_LIMIT, SMTP

HEADER = b"Subject: blocks\r\n\r\n"
STORED_HEADER = b"Subject: blocks\n\n"


class Blocks:
    """Stands in for a session's ``io.read_block`` and counts the bytes the
    DATA reader took, so a test can wait for it before sending more."""

    def __init__(self, io):
        self._read = io.read_block
        self.sizes = []
        self.taken = 0
        io.read_block = self

    def __call__(self, limit=65536):
        block = self._read(limit)
        self.sizes.append(len(block))
        self.taken += len(block)
        return block

    def ends(self):
        """Offsets (in the bytes after the header) where blocks ended."""
        ends, total = [], 0
        for size in self.sizes:
            total += size
            ends.append(total)
        return ends


def start(client, sender="a@b.example"):
    """A transaction up to 354, with a ``Blocks`` counter on the server's
    input (installed while the server waits for the first DATA line)."""
    if client.cmd("EHLO client.example.net").code != 250:
        raise AssertionError("EHLO refused")
    assert client.cmd(f"MAIL FROM:<{sender}>").code == 250
    assert client.cmd("RCPT TO:<c@d.example>").code == 250
    assert client.cmd("DATA") == (354, ["go ahead"])
    return Blocks(client.session.io)


def send_cut(client, blocks, body, cuts, data_end=None, header=HEADER, wait=5.0):
    """Send ``header + body``, ``body`` cut at ``cuts``; after each piece
    but the last, wait until the server's DATA reader has taken all of
    ``body`` sent so far, up to ``data_end`` (default: all of it; less
    when commands follow the final dot), or is done with the connection."""
    data = header + body
    data_end = len(body) if data_end is None else data_end
    points = sorted({len(header) + c for c in cuts if 0 < c < len(body)})
    begin = 0
    for point in points + [len(data)]:
        try:
            client.send(data[begin:point])
        except (BrokenPipeError, ConnectionResetError):
            return
        begin = point
        if point == len(data):
            return
        expected = min(point - len(header), data_end)
        deadline = time.monotonic() + wait
        while blocks.taken < expected and time.monotonic() < deadline:
            if not client.thread.is_alive() or client.session.disconnected:
                return
            time.sleep(0.0005)


def stored(body_lines):
    """What the spool keeps for ``body_lines`` (the text of each line, as
    the client meant it) after our header: LF line ends, no stuffing."""
    return STORED_HEADER + b"".join(line + b"\n" for line in body_lines)


def stuffed(body_lines):
    """The DATA stream a correct client sends for ``body_lines``: a dot
    doubled at the start of a line, CR LF, then the final dot."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in body_lines) + b".\r\n"


@pytest.fixture
def session(mta):
    return mta


def queued(queue_dir):
    return [strip_trace(message) for message in captured_messages(queue_dir)]


# -- the final dot --------------------------------------------------------------------

LINES = [b"line one", b"line two"]


@pytest.mark.parametrize("offset", range(0, 6))
def test_final_dot_split_at_every_offset(session, queue_dir, offset):
    """``<CR><LF>.<CR><LF>`` with a block ending after ``offset`` of its
    bytes (0 and 5: at line ends)."""
    client = session()
    blocks = start(client)
    body = stuffed(LINES)
    marker = len(body) - 5
    send_cut(client, blocks, body, [marker + offset])
    assert client.reply() == (250, ["2.0.0 Queued! 0"])
    assert queued(queue_dir) == [stored(LINES)]
    if 0 < offset < 5:
        assert marker + offset in blocks.ends()
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])


def test_final_dot_one_byte_per_block(session, queue_dir):
    client = session()
    blocks = start(client)
    body = stuffed(LINES)
    cuts = range(len(body) - 6, len(body))
    send_cut(client, blocks, body, cuts)
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored(LINES)]
    assert blocks.ends()[-6:] == list(cuts)[1:] + [len(body)]


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_final_dot_right_after_the_header(session, queue_dir, cut):
    """The body's first line is the final dot: ``.<CR><LF>`` at the start
    of the first block, or split."""
    client = session()
    blocks = start(client)
    send_cut(client, blocks, b".\r\n", [cut])
    assert client.reply().code == 250
    assert queued(queue_dir) == [STORED_HEADER]


@pytest.mark.parametrize("almost", [b"\r\n.\r", b"\r\n.", b"\r\n", b"\r"])
def test_almost_a_final_dot_then_eof_is_incomplete(session, queue_dir, almost):
    """The final dot's bytes cut short by end of input: 451, as line by line."""
    client = session()
    blocks = start(client)
    send_cut(client, blocks, b"body" + almost, [2])
    client.sock.shutdown(socket.SHUT_WR)
    assert client.reply() == (451, ["4.3.0 Incomplete DATA"])
    assert captured_messages(queue_dir) == []
    client.thread.join(5)
    assert spool_files(client) == []


# -- dot-stuffing ----------------------------------------------------------------------------

@pytest.mark.parametrize("cut", range(0, 9))
def test_dot_stuffed_line_split_across_blocks(session, queue_dir, cut):
    """``..x`` and ``..`` (``.x`` and ``.``) whatever block their dots and
    CR LF come in; the dot is only taken off at the start of a line."""
    client = session()
    blocks = start(client)
    lines = [b"a", b".x", b".", b"y.", b"..z"]
    body = stuffed(lines)
    # cut within "a\r\n..x\r\n...": offsets 0-8 walk over the first dots
    send_cut(client, blocks, body, [cut])
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored(lines)]


def test_dot_stuffed_lines_one_byte_per_block(session, queue_dir):
    client = session()
    blocks = start(client)
    lines = [b"..", b".", b"", b". .", b"...x", b"."]
    body = stuffed(lines)
    send_cut(client, blocks, body, range(1, len(body)))
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored(lines)]
    assert len(blocks.sizes) >= len(body)


# -- bare CR and LF at a block boundary ----------------------------------------------------

@pytest.mark.parametrize("first, second", [
    (b"abc\r", b"def\r\n.\r\n"),          # CR ends a block, no LF follows
    (b"abc\r", b"\r\n.\r\n"),             # CR CR LF
    (b"abc", b"\ndef\r\n.\r\n"),          # LF opens a block, no CR before it
    (b"abc\n", b"def\r\n.\r\n"),          # LF ends a block
    (b"ok\r\n\r", b".\r\n"),              # CR at a line start, then a dot
    (b"ok\r\n", b".\n"),                  # <LF>.<LF> smuggling, split
    (b"ok\r", b"\n.\n"),
    (b"ok\r\n.", b"\r\r\n"),
])
def test_bare_cr_or_lf_at_a_block_boundary_is_refused(session, queue_dir, first, second):
    client = session()
    blocks = start(client)
    send_cut(client, blocks, first + second + b"MAIL FROM:<evil@x.example>\r\n",
             [len(first)])
    reply = client.reply()
    assert reply.code == 521 and "bare <LF>" in reply.text
    assert client.closed()
    assert captured_messages(queue_dir) == []
    assert not client.log_contains("dispatching MAIL FROM:<evil@x.example>")
    client.thread.join(5)
    assert spool_files(client) == []


def test_cr_then_lf_in_the_next_block_is_a_line_end(session, queue_dir):
    client = session()
    blocks = start(client)
    send_cut(client, blocks, b"one\r\ntwo\r\n.\r\n", [4, 9])
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored([b"one", b"two"])]
    assert blocks.ends()[:2] == [4, 9]


@pytest.mark.parametrize("tail, code", [
    (b"abc\r", 451),      # its LF may have been on its way
    (b"a\rbc", 521),
    (b"\r\r", 521),
])
def test_unfinished_last_line_at_eof(session, queue_dir, tail, code):
    """End of input inside a line: 451, unless that line already holds a
    bare CR (521), as line by line."""
    client = session()
    blocks = start(client)
    send_cut(client, blocks, b"line\r\n" + tail, [6])
    client.sock.shutdown(socket.SHUT_WR)
    assert client.reply().code == code
    assert captured_messages(queue_dir) == []


# -- lines longer than a block ------------------------------------------------------------------

@pytest.mark.parametrize("cuts", [
    [],
    [70_000],
    [DATA_PIECE_LIMIT, 2 * DATA_PIECE_LIMIT],
    [1, 150_000],
    [150_003],            # between the long line's CR and LF
    [150_002, 150_005],   # before its CR; between the next line's dots
])
def test_line_longer_than_a_block(session, queue_dir, cuts):
    client = session()
    blocks = start(client)
    lines = [b"." + b"y" * 150_000, b".after", b"z" * (DATA_PIECE_LIMIT + 1)]
    body = stuffed(lines)
    send_cut(client, blocks, body, cuts)
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored(lines)]
    assert spool_files(client) == []


def test_bare_cr_deep_in_a_long_line(session, queue_dir):
    client = session()
    blocks = start(client)
    body = b"y" * 100_000 + b"\r" + b"y" * 100_000 + b"\r\n.\r\n"
    send_cut(client, blocks, body, [50_000])
    assert client.reply().code == 521
    assert captured_messages(queue_dir) == []


def test_long_line_ending_in_a_bare_cr_before_the_lf_of_the_next(session, queue_dir):
    """A long line passed on in pieces keeps its last CR back: here it is
    followed by another CR, which makes it bare."""
    client = session()
    blocks = start(client)
    body = b"y" * 100_000 + b"\r\r\n.\r\n"
    send_cut(client, blocks, body, [100_001])
    assert client.reply().code == 521


# -- max_data_line_length ---------------------------------------------------------------------

@pytest.mark.parametrize("length, code", [(1000, 250), (1001, 554)])
@pytest.mark.parametrize("cut", [1, 600, 999, 1000, 1001, 1002])
def test_max_data_line_length_on_a_line_across_blocks(session, queue_dir, length, cut,
                                                       code):
    client = session(max_data_line_length=1000)
    blocks = start(client)
    lines = [b"x" * length, b"short"]
    send_cut(client, blocks, stuffed(lines), [cut])
    if code == 250:
        assert client.reply().code == 250
        assert queued(queue_dir) == [stored(lines)]
    else:
        assert client.reply() == (554, ["5.6.0 Message has a line longer than 1000 "
                                        "characters"])
        assert captured_messages(queue_dir) == []
        assert spool_files(client) == []
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])


def test_max_data_line_length_counts_the_unstuffed_line(session, queue_dir):
    """A stuffed dot is not part of the line; a second line after the long
    one in the same block is still checked."""
    client = session(max_data_line_length=20)
    blocks = start(client)
    lines = [b"." + b"d" * 19, b"e" * 20]
    send_cut(client, blocks, stuffed(lines), [5])
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored(lines)]
    blocks = start(client)
    send_cut(client, blocks, stuffed([b"ok", b"f" * 21, b"ok"]), [])
    assert client.reply().code == 554


@pytest.mark.parametrize("cuts", [[], [DATA_PIECE_LIMIT - 10], [120_000]])
def test_max_data_line_length_on_a_line_longer_than_a_block(session, queue_dir, cuts):
    client = session(max_data_line_length=100_000)
    blocks = start(client)
    send_cut(client, blocks, stuffed([b"short", b"c" * 100_001, b"short"]), cuts)
    assert client.reply().code == 554
    blocks = start(client)
    lines = [b"c" * 100_000, b"short"]
    send_cut(client, blocks, stuffed(lines), cuts)
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored(lines)]


def test_long_line_and_too_big_long_line_wins(session, queue_dir):
    """Both limits crossed: the line length is the reply, as line by line."""
    client = session(max_data_line_length=50, databytes=100)
    blocks = start(client)
    send_cut(client, blocks, stuffed([b"a" * 40] * 5 + [b"b" * 51]), [100])
    assert client.reply().code == 554


# -- databytes ----------------------------------------------------------------------------------

def test_databytes_crossed_inside_a_block(session, queue_dir):
    """The limit is crossed in the middle of a block with lines after it:
    the rest is read to the final dot, 552, the spool file is gone, and
    the commands pipelined behind the dot run."""
    client = session(databytes=5000, size_threshold=0)
    blocks = start(client)
    lines = [b"n" * 98] * 100
    body = stuffed(lines) + b"NOOP\r\n"
    send_cut(client, blocks, body, [3000, 7000])
    assert client.reply() == (552, ["5.3.4 Message too big!"])
    assert client.reply() == (250, ["2.0.0 OK"])
    assert captured_messages(queue_dir) == []
    assert spool_files(client) == []
    assert client.log_contains(f"Message too big: size: {len(stored(lines))} "
                               "(max size: 5000)")


@pytest.mark.parametrize("extra, code", [(0, 250), (1, 552)])
def test_databytes_exact_limit_in_blocks(session, queue_dir, extra, code):
    lines = [b"m" * 50] * 30
    limit = len(stored(lines)) - extra
    client = session(databytes=limit)
    blocks = start(client)
    send_cut(client, blocks, stuffed(lines), [700, 701, 1400])
    assert client.reply().code == code


# -- what follows the final dot ---------------------------------------------------------------

PIPELINED = b"RSET\r\nMAIL FROM:<next@b.example>\r\nQUIT\r\n"


@pytest.mark.parametrize("cut", [None, -len(PIPELINED) - 3, -len(PIPELINED) - 1, -5])
def test_pipelined_commands_after_the_final_dot(session, queue_dir, cut):
    client = session()
    blocks = start(client)
    lines = [b"body", b".dot"]
    body = stuffed(lines) + PIPELINED
    send_cut(client, blocks, body, [] if cut is None else [len(body) + cut],
             data_end=len(body) - len(PIPELINED))
    assert client.reply() == (250, ["2.0.0 Queued! 0"])
    assert client.reply() == (250, ["2.0.0 OK"])
    assert client.reply().code == 250
    assert client.reply().code == 221
    assert client.closed()
    assert queued(queue_dir) == [stored(lines)]
    assert client.log_contains("dispatching MAIL FROM:<next@b.example>")


def test_pipelined_commands_after_a_big_message_in_one_send(session, queue_dir):
    """The dot and the commands behind it come at the end of a 300 KB send:
    what the DATA reader read past the dot goes back to the command loop."""
    client = session()
    start(client)
    lines = [b"w" * 999] * 300
    client.send(HEADER + stuffed(lines) + b"MAIL FROM:<x@b.example>\r\nRCPT TO:<y@d.example>"
                b"\r\nDATA\r\n" + HEADER + b"second\r\n.\r\nQUIT\r\n")
    assert client.reply().code == 250
    assert [client.reply().code for _ in range(4)] == [250, 250, 354, 250]
    assert client.reply().code == 221
    assert queued(queue_dir) == [stored(lines), stored([b"second"])]


def test_dot_looking_lines_before_the_end_are_message_text(session, queue_dir):
    """``<CR><LF>.<CR><LF>`` split so one block ends in ``<CR><LF>.`` and
    the next brings ``x``: a stuffed line, not the end."""
    client = session()
    blocks = start(client)
    body = b"a\r\n.x\r\nQUIT\r\n.\r\n"
    send_cut(client, blocks, body, [4, 5])
    assert client.reply().code == 250
    assert queued(queue_dir) == [stored([b"a", b"x", b"QUIT"])]
    assert client.cmd("NOOP").code == 250


# -- the spool -------------------------------------------------------------------------------------

def test_spool_failure_in_the_body_reads_to_the_dot_then_451(session, queue_dir, tmp_path):
    """The header stays in memory (``size_threshold``); the body's first
    blocks take the message to disk, which fails: 451 after the dot, and
    no message line is taken for a command."""
    client = session(size_threshold=1000)
    spool = tmp_path / "spool"
    for name in os.listdir(spool):
        os.unlink(spool / name)
    spool.rmdir()
    spool.write_text("not a directory")
    blocks = start(client)
    body = stuffed([b"k" * 500] * 10 + [b"MAIL FROM:<evil@attacker.example>", b"RSET"])
    send_cut(client, blocks, body, [2000])
    assert client.reply() == (451, ["4.3.0 Error writing message to the spool, try again "
                                    "later"])
    assert client.cmd("NOOP") == (250, ["2.0.0 OK"])
    assert captured_messages(queue_dir) == []
    assert not client.log_contains("dispatching MAIL FROM:<evil@attacker.example>")


# -- a big message --------------------------------------------------------------------------------

def big_message_lines(size):
    """Lines of many lengths (empty, dotted, up to 3000 bytes, one of
    100 KB), about ``size`` bytes in all."""
    lines, total, n = [], 0, 0
    while total < size:
        n += 1
        kind = n % 7
        if kind == 0:
            line = b"." * (n % 5) + b"dots %d" % n
        elif kind == 1:
            line = b""
        elif kind == 2:
            line = bytes((32 + (n + i) % 95) for i in range(n % 3000))
        elif n == 500:
            line = b"L" * 100_000
        else:
            line = b"line %d " % n + b"\xc3\xa9\x00\t" * (n % 40)
        lines.append(line)
        total += len(line) + 2
    return lines


def test_five_megabytes_stored_byte_for_byte(session, queue_dir):
    client = session(size_threshold=0)
    start(client)
    lines = big_message_lines(5 * 1024 * 1024)
    body = stuffed(lines)
    assert len(body) > 5 * 1024 * 1024
    client.send(HEADER + body + b"NOOP\r\n")
    assert client.reply().code == 250
    assert client.reply().code == 250
    [message] = queued(queue_dir)
    assert message == stored(lines)
    assert spool_files(client) == []


# -- random messages in random pieces --------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SCALE = max(1, int(os.environ.get("QPSMTPD_FUZZ_EXAMPLES", "1") or 1))
MAX_LINE = 40
DATABYTES = 600

line_strategy = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"", b".", b"..", b"...", b".x", b". ", b"x.", b"\x00", b"\xff.",
                     b"QUIT", b"MAIL FROM:<x@y.example>", b"\t.", b"Subject: no"]),
    st.tuples(st.sampled_from([b"", b"."]), st.integers(35, 45)).map(
        lambda t: t[0] + b"q" * t[1]),
    st.integers(DATA_PIECE_LIMIT - 3, DATA_PIECE_LIMIT + 3).map(lambda n: b"Y" * n),
).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))


def expected_outcome(lines, max_line, databytes):
    """The line-by-line reader's verdict and stored bytes, computed here
    from the lines themselves: a line (unstuffed, CR LF not counted) over
    ``max_line`` -> 554, else a message over ``databytes`` -> 552."""
    message = stored(lines)
    if max_line and any(len(line) > max_line for line in lines):
        return 554, None
    if databytes and len(message) > databytes:
        return 552, None
    return 250, message


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Apps without limits, with ``max_data_line_length`` and with
    ``databytes``, each capturing into its own folder."""
    apps = {}
    for name, files in [("none", {}), ("max_line", {"max_data_line_length": str(MAX_LINE)}),
                        ("databytes", {"databytes": str(DATABYTES)})]:
        root = tmp_path_factory.mktemp(f"blocks_{name.replace('_', '')}")
        queue = root / "queue"
        app = build_app(root / "config", ["returns rcpt OK", f"capture {queue}"], files)
        app.queue_dir = queue
        app.limits = (int(files.get("max_data_line_length", 0)),
                      int(files.get("databytes", 0)))
        apps[name] = app
    return apps


def open_session(app):
    """A session in a thread on a socketpair, as conftest's smtp_session."""
    server_sock, client_sock = socket.socketpair()
    connection = Connection(remote_ip="192.0.2.10", remote_port=40000,
                            remote_host="client.example.net", local_ip="192.0.2.1",
                            local_port=25)
    holder = {}

    def serve():
        io = LineIO(server_sock)
        holder["session"] = SMTP(app, io, connection)
        try:
            holder["session"].run()
        finally:
            io.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = Client(client_sock, app.captured_log, thread, holder)
    assert client.reply().code == 220
    return client


@settings(max_examples=300 * SCALE, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(site=st.sampled_from(["none", "max_line", "databytes"]),
       lines=st.lists(line_strategy, max_size=12),
       cuts=st.lists(st.integers(0, 200_000), max_size=6),
       after=st.sampled_from([b"", b"NOOP\r\n", b"RSET\r\nNOOP\r\n"]))
def test_random_messages_in_random_pieces_land_as_line_by_line(sites, site, lines, cuts,
                                                                after):
    app = sites[site]
    max_line, databytes = app.limits
    code, message = expected_outcome(lines, max_line, databytes)
    client = open_session(app)
    try:
        blocks = start(client)
        body = stuffed(lines) + after
        cuts = [cut % (len(body) + 1) for cut in cuts]
        send_cut(client, blocks, body, cuts, data_end=len(body) - len(after))
        reply = client.reply()
        event(f"reply {code}")
        event(f"{len(blocks.sizes)} blocks" if len(blocks.sizes) < 4 else "4+ blocks")
        assert reply.code == code, (reply, lines)
        if code == 250:
            queued_message, _ = queued_files(app.queue_dir, queued_number(reply))
            assert strip_trace(queued_message) == message
        for _ in range(after.count(b"\n")):
            assert client.reply().code == 250
        assert client.cmd("QUIT").code == 221
    finally:
        client.close()
    assert not any("Traceback" in line for line in app.captured_log)
