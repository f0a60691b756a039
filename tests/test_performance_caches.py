"""What the daemon prepares once so that forked workers do not pay for it:
the configuration cache (``Config.preload``), the address grammar (compiled
by ``qpsmtpd.app.warm_imports()``, not at import: the per-connection program
needs it only at MAIL), the MAIL/RCPT keyword patterns compiled at import,
and the spool's direct write path. Each test checks the behaviour an admin
relies on (edits still seen, bytes kept exactly) as well as the work saved."""

import os
import subprocess
import sys

import pytest

from qpsmtpd import config as config_module
from qpsmtpd.command import CommandSyntaxError, parse_path
from qpsmtpd.config import Config
from qpsmtpd.spool import Spool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def dirs(tmp_path):
    first, last = tmp_path / "config", tmp_path / "control"
    first.mkdir()
    last.mkdir()
    return first, last


def count_reads(monkeypatch):
    """Count the files Config reads from disk."""
    reads = []
    real_read = Config._read

    def read(self, path, key):
        if key is not None and path not in self._files:
            reads.append(path)
        return real_read(self, path, key)

    monkeypatch.setattr(Config, "_read", read)
    return reads


# -- Config.preload ----------------------------------------------------------------

def test_preload_reads_every_file_once_and_lookups_then_read_nothing(dirs, monkeypatch):
    first, last = dirs
    (first / "rcpthosts").write_text("example.test\n")
    (first / "badmailfrom").write_text("@spam.example\n")
    (last / "me").write_text("mx.example.test\n")
    config = Config([str(first), str(last)])
    reads = count_reads(monkeypatch)
    config.preload()
    assert sorted(os.path.basename(p) for p in reads) == ["badmailfrom", "me", "rcpthosts"]
    reads.clear()
    assert config.get_list("rcpthosts") == ["example.test"]
    assert config.get_list("badmailfrom") == ["@spam.example"]
    assert config.me() == "mx.example.test"
    assert config.databytes() == 0          # absent core file: cached as absent
    assert reads == []


def test_preload_keeps_edits_visible(dirs):
    first, _ = dirs
    (first / "rcpthosts").write_text("example.test\n")
    config = Config([str(first)])
    config.preload()
    (first / "rcpthosts").write_text("example.test\nexample.org\n")
    assert config.get_list("rcpthosts") == ["example.test", "example.org"]
    (first / "databytes").write_text("1000\n")   # was absent at preload
    assert config.databytes() == 1000


def test_preload_skips_maps_large_and_hidden_files(dirs, monkeypatch):
    first, _ = dirs
    (first / "morercpthosts.cdb").write_bytes(b"\0" * 2048)
    (first / ".hidden").write_text("x\n")
    (first / "huge").write_text("x\n" * (config_module.PRELOAD_SIZE_LIMIT // 2 + 1))
    (first / "small").write_text("y\n")
    config = Config([str(first)])
    reads = count_reads(monkeypatch)
    config.preload()
    names = {os.path.basename(p) for p in reads}
    assert "small" in names
    assert not names & {"morercpthosts.cdb", ".hidden", "huge"}
    assert config.get_list("huge")[:1] == ["x"]   # still readable when asked


def test_preload_extra_names_and_no_hook(dirs, monkeypatch):
    first, _ = dirs
    config = Config([str(first)])
    asked = []
    config.hook = lambda name: asked.append(name)
    reads = count_reads(monkeypatch)
    config.preload(["karma_tlds"])
    assert asked == []
    assert "karma_tlds" in config._lists        # remembered as absent
    (first / "karma_tlds").write_text("biz:-2\n")
    assert config.get_list("karma_tlds") == ["biz:-2"]
    assert reads[-1].endswith("karma_tlds")


def test_preload_survives_unreadable_directory(tmp_path):
    config = Config([str(tmp_path / "missing"), str(tmp_path)])
    config.preload()                              # no exception
    assert config.get_list("plugins") == []


def test_include_cycle_still_found_without_eager_realpath(dirs):
    first, _ = dirs
    (first / "a").write_text("$include b\n")
    (first / "b").write_text("$include a\n")
    (first / "plain").write_text("value\n")
    lines = []
    config = Config([str(first)], log=lambda level, message: lines.append(message))
    assert config.get_list("plain") == ["value"]
    assert config.get_list("a") == []
    assert "Circular $include reference in config a:" in lines


# -- patterns compiled at import -----------------------------------------------------

def test_address_grammar_is_compiled_by_warm_imports_keywords_at_import():
    out = subprocess.run(
        [sys.executable, "-c",
         "import qpsmtpd.address as a, qpsmtpd.command as c, qpsmtpd.app as app; "
         "before = a._compile.cache_info().currsize; app.warm_imports(); "
         "print(before, a._compile.cache_info().currsize, "
         "c._keyword.cache_info().currsize)"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    before, grammar, keywords = map(int, out.stdout.split())
    assert before == 0 and grammar == 1 and keywords == 2


@pytest.mark.parametrize("keyword, rest, path", [
    ("from", "FROM:<a@example.test>", "<a@example.test>"),
    ("from", "From: <a@example.test> SIZE=10", "<a@example.test>"),
    ("to", "tO:<b@example.test>", "<b@example.test>"),
    ("TO", "to:<b@example.test>", "<b@example.test>"),
])
def test_keyword_patterns_any_case(keyword, rest, path):
    assert parse_path(keyword, rest)[0] == path


def test_keyword_pattern_refuses_other_keywords():
    with pytest.raises(CommandSyntaxError):
        parse_path("from", "TO:<a@example.test>")
    with pytest.raises(CommandSyntaxError):
        parse_path("to", "TO<a@example.test>")


# -- the spool's direct write path ----------------------------------------------------

def test_spool_on_disk_writes_through_the_file(tmp_path):
    spool = Spool(str(tmp_path) + "/", size_threshold=10)
    spool.write(b"12345")
    assert spool.path is None and spool.size == 5      # still in memory
    spool.write(b"67890\n")
    assert spool.path is not None                      # threshold reached
    assert spool.write == spool._file.write            # no Python per piece
    for _ in range(1000):
        spool.write(b"line\n")
    assert spool.size == 11 + 5000
    with spool.open() as stream:
        assert stream.read() == b"1234567890\n" + b"line\n" * 1000
    with open(spool.filename(), "rb") as handle:
        assert handle.read(11) == b"1234567890\n"


def test_spool_discard_restores_the_method_and_removes_the_file(tmp_path):
    spool = Spool(str(tmp_path) + "/", size_threshold=0)
    spool.write(b"x\n")
    path = spool.path
    spool.discard()
    assert not os.path.exists(path)
    assert "write" not in vars(spool)
    assert spool.size == 0
    spool.discard()                                    # twice is fine


def test_spool_without_directory_raises_at_the_threshold():
    spool = Spool(None, size_threshold=4)
    spool.write(b"ab")
    with pytest.raises(OSError):
        spool.write(b"cdef")
