"""Constant databases: D. J. Bernstein's cdb format, read and written in pure Python.

qmail keeps large lists as cdb files (``morercpthosts.cdb``,
``morerelayclients.cdb``); qpsmtpd reads them as maps (``config(name, "map")``).
The files are small, so the reader loads the whole map at once and the caller
(``qpsmtpd.config``) caches it by mtime.

Format (all integers unsigned 32-bit little-endian):

* a 2048-byte header: 256 pairs ``(table position, table slot count)``;
* the records, from offset 2048: ``klen, dlen, key bytes, data bytes``;
* the 256 hash tables, each ``slots`` pairs ``(hash, record position)``;
  position 0 marks an empty slot. A key with hash ``h`` lives in table
  ``h & 255``, probing linearly from slot ``(h >> 8) % slots``; every table
  has twice as many slots as entries.
* hash: ``h = 5381``; for each byte ``c``: ``h = ((h << 5) + h) ^ c``, kept to
  32 bits.

API:

* ``read_cdb(path) -> dict[bytes, bytes]`` — the whole map; for a key stored
  more than once the first record wins, as a cdb lookup would answer.
* ``iter_cdb(path)`` — every record ``(key, value)`` in file order, duplicates
  included.
* ``write_cdb(path, mapping)`` — ``mapping`` is a mapping or an iterable of
  ``(key, value)`` pairs (so duplicates can be written); keys and values are
  bytes.
* ``CDBWriter(path)`` — incremental writer: ``add(key, value)``, then
  ``finish()`` (or use it as a context manager; an exception inside the
  ``with`` block discards the new file). The database is built in a
  temporary file in the target's directory and renamed over ``path``, so a
  reader sees either the old file or the complete new one. A replaced file
  keeps its permission bits; a new one gets ``0666 & ~umask``.
* ``CDBError`` (a ``ValueError``) — the file is truncated or inconsistent, or
  a database would exceed 4 GiB. I/O failures raise ``OSError`` as usual.

The reader checks the whole file, not just the records it happens to need:
every record must lie inside the data area, and the hash tables must index
every record exactly once with the right hash. A cdb written halfway or
damaged on disk is therefore refused instead of answering half the keys.

Command line, with the input and output format of ``cdbmake``/``cdbdump``
(``+klen,dlen:key->data`` lines, then an empty line)::

    python3 -m qpsmtpd.cdb make morercpthosts.cdb < records
    python3 -m qpsmtpd.cdb dump morercpthosts.cdb

For example, a ``morercpthosts.cdb`` from a plain list of domains (ASCII
names; values are empty, as qmail-newmrh writes them)::

    awk 'NF {print "+" length($1) ",0:" tolower($1) "->"} END {print ""}' \\
        morercpthosts | python3 -m qpsmtpd.cdb make morercpthosts.cdb
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["CDBError", "CDBWriter", "cdb_hash", "iter_cdb", "parse_cdb",
           "read_cdb", "write_cdb"]

HEADER_SIZE = 2048
TABLE_COUNT = 256
MAX_SIZE = 0xFFFFFFFF

_PAIR = struct.Struct("<II")


class CDBError(ValueError):
    """A cdb file is malformed, or a database would be too large."""


def cdb_hash(key: bytes) -> int:
    """The cdb hash of ``key`` (32-bit)."""
    h = 5381
    for c in key:
        h = (((h << 5) + h) ^ c) & 0xFFFFFFFF
    return h


def read_cdb(path) -> dict[bytes, bytes]:
    """The whole database at ``path`` as a dict; the first record of a key wins.

    Raises ``CDBError`` for a truncated or corrupt file, ``OSError`` when the
    file cannot be read.
    """
    result: dict[bytes, bytes] = {}
    for key, value in iter_cdb(path):
        result.setdefault(key, value)
    return result


def iter_cdb(path) -> Iterator[tuple[bytes, bytes]]:
    """Every record of the database at ``path``, in file order."""
    with open(path, "rb") as fh:
        blob = fh.read()
    return iter(parse_cdb(blob, os.fspath(path)))


def parse_cdb(blob: bytes, name: str = "<cdb>") -> list[tuple[bytes, bytes]]:
    """The records of a cdb image, in file order, after checking its structure.

    ``name`` only appears in error messages.
    """
    size = len(blob)
    if size < HEADER_SIZE:
        raise CDBError(f"{name}: truncated cdb: {size} bytes, "
                       f"the header alone is {HEADER_SIZE}")
    tables = [_PAIR.unpack_from(blob, i * 8) for i in range(TABLE_COUNT)]
    for number, (position, slots) in enumerate(tables):
        if slots and (position < HEADER_SIZE or position + slots * 8 > size):
            raise CDBError(f"{name}: hash table {number} ({slots} slots at "
                           f"offset {position}) lies outside the file "
                           f"({size} bytes); truncated or corrupt")

    # Records run from the header to the first hash table.
    used = [position for position, slots in tables if slots]
    data_end = min(used) if used else size
    records: list[tuple[bytes, bytes]] = []
    starts: dict[int, bytes] = {}
    position = HEADER_SIZE
    while position < data_end:
        if position + 8 > data_end:
            raise CDBError(f"{name}: truncated record header at offset {position}")
        klen, dlen = _PAIR.unpack_from(blob, position)
        key_start = position + 8
        value_start = key_start + klen
        record_end = value_start + dlen
        if record_end > data_end:
            raise CDBError(f"{name}: record at offset {position} "
                           f"(key {klen} bytes, data {dlen} bytes) runs past "
                           f"the end of the data area at {data_end}")
        key = blob[key_start:value_start]
        starts[position] = key
        records.append((key, blob[value_start:record_end]))
        position = record_end

    seen: set[int] = set()
    for number, (table_position, slots) in enumerate(tables):
        for slot in range(slots):
            h, record_position = _PAIR.unpack_from(blob, table_position + slot * 8)
            if record_position == 0:
                continue
            key = starts.get(record_position)
            if key is None or record_position in seen:
                raise CDBError(f"{name}: hash table {number} slot {slot} points "
                               f"to offset {record_position}, which is not the "
                               f"start of an unindexed record")
            if h != cdb_hash(key) or h & 0xFF != number:
                raise CDBError(f"{name}: hash table {number} slot {slot} has "
                               f"hash {h:#010x}, which does not match its "
                               f"record at offset {record_position}")
            seen.add(record_position)
    if len(seen) != len(records):
        raise CDBError(f"{name}: {len(records)} records but only {len(seen)} "
                       f"are indexed; truncated or corrupt")
    return records


class CDBWriter:
    """Builds a cdb file at ``path``; nothing is visible there until ``finish()``.

    ``add()`` may be called any number of times, also with a key already
    added (readers then see the first value). ``abort()`` discards the work.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        import tempfile  # writers only: readers (config maps) do without it
        fd, self._temp_path = tempfile.mkstemp(
            prefix="." + os.path.basename(self.path) + ".", suffix=".tmp",
            dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._file.write(b"\0" * HEADER_SIZE)
        self._position = HEADER_SIZE
        self._entries: list[tuple[int, int]] = []
        self._done = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.abort()
        return False

    def add(self, key: bytes, value: bytes) -> None:
        """Append one record."""
        if self._done:
            raise ValueError("CDBWriter: add() after finish() or abort()")
        key = _as_bytes(key, "key")
        value = _as_bytes(value, "value")
        record = _PAIR.pack(len(key), len(value)) + key + value
        # Room for the record plus its two hash-table slots.
        if self._position + len(record) + 16 * (len(self._entries) + 1) > MAX_SIZE:
            self.abort()
            raise CDBError(f"{self.path}: a cdb cannot exceed 4 GiB")
        self._entries.append((cdb_hash(key), self._position))
        self._file.write(record)
        self._position += len(record)

    def finish(self) -> None:
        """Write the hash tables and header, then rename over ``path``."""
        if self._done:
            raise ValueError("CDBWriter: finish() called twice or after abort()")
        try:
            buckets: list[list[tuple[int, int]]] = [[] for _ in range(TABLE_COUNT)]
            for h, record_position in self._entries:
                buckets[h & 0xFF].append((h, record_position))
            header = []
            for bucket in buckets:
                slots = 2 * len(bucket)
                table = [(0, 0)] * slots
                for h, record_position in bucket:
                    slot = (h >> 8) % slots
                    while table[slot][1] != 0:
                        slot = (slot + 1) % slots
                    table[slot] = (h, record_position)
                header.append(_PAIR.pack(self._position, slots))
                self._file.write(b"".join(_PAIR.pack(*entry) for entry in table))
                self._position += 8 * slots
            self._file.seek(0)
            self._file.write(b"".join(header))
            self._file.flush()
            os.fchmod(self._file.fileno(), _target_mode(self.path))
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left as it was."""
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self._temp_path)
        except FileNotFoundError:
            pass


def write_cdb(path, mapping: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> None:
    """Write ``mapping`` (a mapping or ``(key, value)`` pairs) as a cdb at ``path``."""
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    with CDBWriter(path) as writer:
        for key, value in items:
            writer.add(key, value)


def _as_bytes(value, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"cdb {what} must be bytes, not {type(value).__name__}")


def _target_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        # The only way to read the umask is to set it; this is not done
        # from threads, so the brief change is harmless.
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


# -- command line --------------------------------------------------------------

def _read_cdbmake(stream) -> Iterator[tuple[bytes, bytes]]:
    """Records in cdbmake's input format; raises CDBError on a malformed line."""
    number = 0
    while True:
        number += 1
        first = stream.read(1)
        if first == b"\n":
            return
        if first != b"+":
            raise CDBError(f"input record {number}: expected '+' or an empty "
                           f"line, got {first!r}")
        klen = _read_number(stream, b",", number)
        dlen = _read_number(stream, b":", number)
        key = stream.read(klen)
        arrow = stream.read(2)
        value = stream.read(dlen)
        newline = stream.read(1)
        if len(key) != klen or arrow != b"->" or len(value) != dlen or newline != b"\n":
            raise CDBError(f"input record {number}: malformed or truncated")
        yield key, value


def _read_number(stream, terminator: bytes, number: int) -> int:
    digits = b""
    while True:
        c = stream.read(1)
        if c == terminator and digits:
            return int(digits)
        if not c.isdigit() or len(digits) > 10:
            raise CDBError(f"input record {number}: bad length field")
        digits += c


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("make", "dump"):
        sys.stderr.write("usage: python3 -m qpsmtpd.cdb make|dump FILE.cdb\n")
        return 100
    command, path = argv
    try:
        if command == "make":
            with CDBWriter(path) as writer:
                for key, value in _read_cdbmake(sys.stdin.buffer):
                    writer.add(key, value)
        else:
            out = sys.stdout.buffer
            for key, value in iter_cdb(path):
                out.write(b"+%d,%d:%s->%s\n" % (len(key), len(value), key, value))
            out.write(b"\n")
            out.flush()
    except (OSError, CDBError) as exc:
        sys.stderr.write(f"qpsmtpd.cdb {command}: {exc}\n")
        return 111
    return 0


if __name__ == "__main__":
    sys.exit(main())
