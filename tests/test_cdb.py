"""Tests for qpsmtpd.cdb: the constant database reader and writer."""

import os
import shutil
import stat
import struct
import subprocess
import sys

import pytest

from qpsmtpd import cdb
from qpsmtpd.cdb import CDBError, CDBWriter, cdb_hash, iter_cdb, read_cdb, write_cdb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_record_image(key, value):
    """A cdb holding one record, laid out by hand from the format description."""
    h = cdb_hash(key)
    record = struct.pack("<II", len(key), len(value)) + key + value
    table_position = 2048 + len(record)
    header = []
    position = table_position
    for number in range(256):
        # Each table starts where the previous one ended, as cdbmake writes them.
        slots = 2 if number == h & 255 else 0
        header.append(struct.pack("<II", position, slots))
        position += 8 * slots
    table = [(0, 0), (0, 0)]
    table[(h >> 8) % 2] = (h, 2048)
    return (b"".join(header) + record
            + b"".join(struct.pack("<II", *entry) for entry in table))


def lookup(blob, key):
    """Every value for ``key``, found the way a C cdb reader probes the tables."""
    h = cdb_hash(key)
    table_position, slots = struct.unpack_from("<II", blob, (h & 255) * 8)
    values = []
    if slots == 0:
        return values
    slot = (h >> 8) % slots
    for _ in range(slots):
        slot_hash, record_position = struct.unpack_from("<II", blob, table_position + slot * 8)
        if record_position == 0:
            break
        if slot_hash == h:
            klen, dlen = struct.unpack_from("<II", blob, record_position)
            start = record_position + 8
            if blob[start:start + klen] == key:
                values.append(blob[start + klen:start + klen + dlen])
        slot = (slot + 1) % slots
    return values


def test_hash_known_values():
    assert cdb_hash(b"") == 5381
    assert cdb_hash(b"a") == (5381 * 33) ^ ord("a")
    # Wraps at 32 bits.
    assert cdb_hash(b"x" * 100) < 2**32
    h = 5381
    for c in b"x" * 100:
        h = ((h * 33) ^ c) % 2**32
    assert cdb_hash(b"x" * 100) == h


def test_writer_matches_hand_built_layout(tmp_path):
    path = tmp_path / "one.cdb"
    write_cdb(path, {b"example.com": b""})
    assert path.read_bytes() == one_record_image(b"example.com", b"")


def test_reader_reads_hand_built_file(tmp_path):
    path = tmp_path / "one.cdb"
    path.write_bytes(one_record_image(b"!example.com-", b"user\0uid\0"))
    assert read_cdb(path) == {b"!example.com-": b"user\0uid\0"}


def test_round_trip(tmp_path):
    mapping = {b"": b"empty key", b"\x00\xff binary": b"\x01\x02",
               b"long": b"v" * 70000}
    mapping.update({f"host{i}.example.com".encode(): str(i).encode()
                    for i in range(1000)})
    path = tmp_path / "big.cdb"
    write_cdb(path, mapping)
    assert read_cdb(path) == mapping


def test_writer_output_is_found_by_hash_probing(tmp_path):
    mapping = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(2000)}
    path = tmp_path / "probe.cdb"
    write_cdb(path, list(mapping.items()) + [(b"key-7", b"later")])
    blob = path.read_bytes()
    for key, value in mapping.items():
        expected = [value, b"later"] if key == b"key-7" else [value]
        assert lookup(blob, key) == expected, key
    assert lookup(blob, b"absent") == []


def test_duplicate_keys_first_wins(tmp_path):
    path = tmp_path / "dup.cdb"
    write_cdb(path, [(b"k", b"first"), (b"other", b"x"), (b"k", b"second")])
    assert read_cdb(path) == {b"k": b"first", b"other": b"x"}
    assert list(iter_cdb(path)) == [(b"k", b"first"), (b"other", b"x"),
                                    (b"k", b"second")]


def test_empty_database(tmp_path):
    path = tmp_path / "empty.cdb"
    write_cdb(path, {})
    assert path.stat().st_size == 2048
    assert read_cdb(path) == {}


def test_truncated_header_raises(tmp_path):
    path = tmp_path / "short.cdb"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(CDBError, match="truncated"):
        read_cdb(path)


def test_truncated_file_raises(tmp_path):
    path = tmp_path / "cut.cdb"
    write_cdb(path, {b"key%d" % i: b"value" for i in range(50)})
    blob = path.read_bytes()
    for cut in (len(blob) - 1, len(blob) - 300, 2048 + 20):
        path.write_bytes(blob[:cut])
        with pytest.raises(CDBError):
            read_cdb(path)


def first_used_slot(blob, key):
    """Offset in ``blob`` of the first used slot of the hash table ``key`` falls in."""
    table_position, slots = struct.unpack_from("<II", blob, (cdb_hash(key) & 255) * 8)
    for slot in range(slots):
        offset = table_position + slot * 8
        if struct.unpack_from("<II", blob, offset)[1]:
            return offset
    raise AssertionError(f"no used slot in the hash table of {key!r}")


def test_corrupt_pointer_raises(tmp_path):
    path = tmp_path / "bad.cdb"
    write_cdb(path, {b"alpha": b"1", b"beta": b"2"})
    blob = bytearray(path.read_bytes())
    # Point the first used hash slot somewhere that is not a record.
    offset = first_used_slot(blob, b"alpha")
    h, record_position = struct.unpack_from("<II", blob, offset)
    struct.pack_into("<II", blob, offset, h, record_position + 1)
    path.write_bytes(bytes(blob))
    with pytest.raises(CDBError, match="not the start"):
        read_cdb(path)


def test_unindexed_record_raises(tmp_path):
    path = tmp_path / "unindexed.cdb"
    write_cdb(path, {b"alpha": b"1", b"beta": b"2"})
    blob = bytearray(path.read_bytes())
    struct.pack_into("<II", blob, first_used_slot(blob, b"beta"), 0, 0)
    path.write_bytes(bytes(blob))
    with pytest.raises(CDBError, match="indexed"):
        read_cdb(path)


def test_corrupt_record_length_raises(tmp_path):
    path = tmp_path / "len.cdb"
    write_cdb(path, {b"alpha": b"1"})
    blob = bytearray(path.read_bytes())
    struct.pack_into("<II", blob, 2048, 5, 999)
    path.write_bytes(bytes(blob))
    with pytest.raises(CDBError, match="runs past"):
        read_cdb(path)


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "garbage.cdb"
    path.write_bytes(b"this is a text file, not a cdb\n" * 100)
    with pytest.raises(CDBError):
        read_cdb(path)


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_cdb(tmp_path / "nope.cdb")


def test_write_replaces_atomically_and_keeps_mode(tmp_path):
    path = tmp_path / "hosts.cdb"
    write_cdb(path, {b"old": b""})
    os.chmod(path, 0o640)
    write_cdb(path, {b"new": b""})
    assert read_cdb(path) == {b"new": b""}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["hosts.cdb"]


def test_new_file_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_cdb(tmp_path / "new.cdb", {b"k": b"v"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.cdb").stat().st_mode) == 0o640


def test_failure_inside_with_leaves_old_file(tmp_path):
    path = tmp_path / "hosts.cdb"
    write_cdb(path, {b"old": b""})
    with pytest.raises(RuntimeError):
        with CDBWriter(path) as writer:
            writer.add(b"new", b"")
            raise RuntimeError("boom")
    assert read_cdb(path) == {b"old": b""}
    assert sorted(os.listdir(tmp_path)) == ["hosts.cdb"]


def test_writer_rejects_str_and_reuse(tmp_path):
    writer = CDBWriter(tmp_path / "x.cdb")
    with pytest.raises(TypeError):
        writer.add("text", b"")
    writer.finish()
    with pytest.raises(ValueError):
        writer.add(b"k", b"v")
    with pytest.raises(ValueError):
        writer.finish()


def test_command_line_make_and_dump(tmp_path):
    path = tmp_path / "cli.cdb"
    records = b"+3,1:one->1\n+0,2:->\x00\n\n+3,1:one->2\n\n"
    env = dict(os.environ, PYTHONPATH=REPO)
    made = subprocess.run([sys.executable, "-m", "qpsmtpd.cdb", "make", str(path)],
                          input=records, capture_output=True, env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert read_cdb(path) == {b"one": b"1", b"": b"\x00\n"}
    dumped = subprocess.run([sys.executable, "-m", "qpsmtpd.cdb", "dump", str(path)],
                            capture_output=True, env=env, cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == records


def test_command_line_make_rejects_bad_input(tmp_path, capsysbinary, monkeypatch):
    path = tmp_path / "bad.cdb"

    class FakeStdin:
        buffer = __import__("io").BytesIO(b"+3,9:one->1\n\n")

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    assert cdb.main(["make", str(path)]) == 111
    assert b"malformed" in capsysbinary.readouterr().err
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def system_cdb_tools():
    """(make argv builder, dump argv builder) for an installed cdb tool set, or None."""
    if shutil.which("cdbmake") and shutil.which("cdbdump"):     # freecdb
        return (lambda path, tmp: ["cdbmake", path, tmp],
                lambda path: ["cdbdump"], True)
    if shutil.which("cdb"):                                      # tinycdb
        return (lambda path, tmp: ["cdb", "-c", "-t", tmp, path],
                lambda path: ["cdb", "-d", path], False)
    return None


@pytest.mark.skipif(system_cdb_tools() is None,
                    reason="no cdbmake/cdbdump (Debian freecdb) or cdb (Debian "
                           "tinycdb) installed to cross-check the format")
def test_cross_check_with_system_cdb_tools(tmp_path):
    make_argv, dump_argv, dump_reads_stdin = system_cdb_tools()
    mapping = {b"host%d.example" % i: b"v%d" % i for i in range(300)}
    records = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v)
                       for k, v in mapping.items()) + b"\n"
    theirs = tmp_path / "theirs.cdb"
    subprocess.run(make_argv(str(theirs), str(tmp_path / "theirs.tmp")),
                   input=records, check=True)
    assert read_cdb(theirs) == mapping
    ours = tmp_path / "ours.cdb"
    write_cdb(ours, mapping)
    with open(ours, "rb") as fh:
        dumped = subprocess.run(dump_argv(str(ours)),
                                stdin=fh if dump_reads_stdin else subprocess.DEVNULL,
                                capture_output=True, check=True)
    assert dumped.stdout == records
