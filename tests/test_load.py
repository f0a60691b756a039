"""A bounded load test against the real qpsmtpd-forkserver: 300 clients
connect at once, each sends 7 messages over its connection (2100 in all,
pipelined MAIL/RCPT/DATA); every message the server acknowledged with 250
must be in maildir/new exactly once, nothing else may be there, and the
daemon must still serve afterwards. Bounded to well under a minute on two
cores."""

import asyncio
import collections
import os
import re
import time

import pytest

from forkserver_fixtures import Daemon, wait_for

CONNECTIONS = 300
MESSAGES_PER_CONNECTION = 7
TIME_LIMIT = 60
MESSAGE_ID = re.compile(rb"^Message-Id: (<[^>]+>)$", re.M | re.I)


async def reply(reader):
    """(code, last line) of one (multi-line) reply; (0, b'') at EOF."""
    while True:
        line = await reader.readline()
        if not line:
            return 0, b""
        if line[3:4] != b"-":
            return int(line[:3]), line


async def client(port, number, acknowledged, refused):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        code, _ = await reply(reader)
        if code != 220:
            refused.append((number, code))
            return
        writer.write(b"EHLO load.example\r\n")
        await reply(reader)
        for index in range(MESSAGES_PER_CONNECTION):
            message_id = f"<load-{number}-{index}@client.example>"
            writer.write(b"MAIL FROM:<load@client.example>\r\n"
                         b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
            codes = [(await reply(reader))[0] for _ in range(3)]
            if codes != [250, 250, 354]:
                refused.append((number, codes))
                return
            body = (f"Message-Id: {message_id}\r\nSubject: load {number}/{index}\r\n\r\n"
                    + f"line {index}\r\n" * 50 + ".\r\n")
            writer.write(body.encode())
            code, _ = await reply(reader)
            if code == 250:
                acknowledged.append(message_id)
            else:
                refused.append((number, code))
        writer.write(b"QUIT\r\n")
        await reply(reader)
    finally:
        writer.close()


async def run_load(port):
    acknowledged, refused = [], []
    await asyncio.wait_for(asyncio.gather(*(
        client(port, number, acknowledged, refused) for number in range(CONNECTIONS))),
        TIME_LIMIT)
    return acknowledged, refused


def landed_ids(maildir):
    new = os.path.join(maildir, "new")
    found = []
    for name in os.listdir(new):
        with open(os.path.join(new, name), "rb") as handle:
            match = MESSAGE_ID.search(handle.read())
        found.append(match.group(1).decode() if match else name)
    return found


@pytest.fixture
def server(tmp_path):
    daemon = Daemon(tmp_path, args=["-H", "--limit-connections", str(CONNECTIONS + 20),
                                    "--max-from-ip", "0"],
                    config={"loglevel": "3"})
    yield daemon
    daemon.stop()


def test_hundreds_of_connections_lose_and_duplicate_nothing(server):
    started = time.monotonic()
    acknowledged, refused = asyncio.run(run_load(server.port))
    elapsed = time.monotonic() - started
    assert refused == []
    assert len(acknowledged) == CONNECTIONS * MESSAGES_PER_CONNECTION
    landed = collections.Counter(landed_ids(server.maildir))
    assert [mid for mid, count in landed.items() if count > 1] == []
    assert set(landed) == set(acknowledged)
    assert elapsed < TIME_LIMIT
    # still serving, and every worker has ended
    assert wait_for(lambda: server.children() == [], timeout=20)
    client = server.connect()
    client.start_data()
    client.send("Subject: after the load\r\n\r\nok\r\n.\r\n")
    assert client.reply()[0] == 250
    client.close()
    assert "Traceback" not in server.log()
    print(f"{len(acknowledged)} messages over {CONNECTIONS} connections in {elapsed:.1f} s")
