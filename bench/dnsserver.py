"""The benchmark's DNS server: a tiny authoritative responder on 127.0.0.1.

It exists so that every DNS lookup made during a benchmark stays on the
machine and is answered at once: the DNSBL zones of ``dnsbl`` (the client
127.0.0.1 is never listed: ``NXDOMAIN``), and the reverse lookup qpsmtpd
0.94's forkserver makes for every connection (``1.0.0.127.in-addr.arpa``
answers ``PTR localhost.``). Everything else is ``NXDOMAIN`` too. UDP only;
answers are never truncated (they are tiny).

Run it as a program; it prints the port it listens on, then serves until
killed::

    python3 bench/dnsserver.py [--port N]

Only the standard library, so it runs in any Python the bench runs in.
"""

import argparse
import socket
import struct
import sys

PTR_NAMES = {"1.0.0.127.in-addr.arpa": "localhost"}
TYPE_PTR = 12
FLAG_QR_AA = 0x8400
RCODE_NXDOMAIN = 3


def read_question(packet):
    """(id, flags, qname, qtype, end of question) or None when malformed."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1 or flags & 0x8000:
        return None
    labels = []
    pos = 12
    while True:
        if pos >= len(packet):
            return None
        length = packet[pos]
        pos += 1
        if length == 0:
            break
        if length > 63:
            return None  # no compression in questions
        labels.append(packet[pos:pos + length].decode("ascii", "replace"))
        pos += length
    if pos + 4 > len(packet):
        return None
    qtype, _qclass = struct.unpack("!HH", packet[pos:pos + 4])
    return ident, flags, ".".join(labels).lower(), qtype, pos + 4


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def answer(packet):
    """The response to one query packet, or None to ignore it."""
    question = read_question(packet)
    if question is None:
        return None
    ident, flags, qname, qtype, end = question
    body = packet[12:end]
    recursion_desired = flags & 0x0100
    target = PTR_NAMES.get(qname)
    if target is not None and qtype == TYPE_PTR:
        rdata = encode_name(target)
        record = (b"\xc0\x0c" + struct.pack("!HHIH", TYPE_PTR, 1, 3600, len(rdata))
                  + rdata)
        header = struct.pack("!HHHHHH", ident, FLAG_QR_AA | recursion_desired,
                             1, 1, 0, 0)
        return header + body + record
    rcode = 0 if target is not None else RCODE_NXDOMAIN
    header = struct.pack("!HHHHHH", ident,
                         FLAG_QR_AA | recursion_desired | rcode, 1, 0, 0, 0)
    return header + body


def serve(port=0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    print(sock.getsockname()[1], flush=True)
    while True:
        packet, peer = sock.recvfrom(4096)
        response = answer(packet)
        if response is not None:
            sock.sendto(response, peer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args(argv)
    try:
        serve(options.port)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
