"""Tests for qpsmtpd.config: search path, file format, includes, caching, maps."""

import os
import stat

import pytest

from qpsmtpd import config as config_module
from qpsmtpd.cdb import write_cdb
from qpsmtpd.config import Config, default_dirs


class Recorder:
    """A log callable that keeps (level, message) pairs."""

    def __init__(self):
        self.lines = []

    def __call__(self, level, message):
        self.lines.append((int(level), message))

    def at(self, max_level):
        return [m for level, m in self.lines if level <= max_level]


@pytest.fixture
def log():
    return Recorder()


@pytest.fixture
def dirs(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    return first, second


@pytest.fixture
def cfg(dirs, log):
    return Config([str(d) for d in dirs], log=log)


def write(path, text, mtime=None):
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


# -- search path ---------------------------------------------------------------

def test_default_dirs_from_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QPSMTPD_CONFIG", "/etc/qpsmtpd")
    monkeypatch.setenv("QMAIL", "/opt/qmail")
    expected = ["/etc/qpsmtpd", str(tmp_path / "config"), "/opt/qmail/control"]
    assert default_dirs() == expected
    assert config_module.DEFAULT_DIRS == expected
    assert Config().dirs == expected


def test_default_dirs_without_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QPSMTPD_CONFIG", raising=False)
    monkeypatch.delenv("QMAIL", raising=False)
    assert config_module.DEFAULT_DIRS == [str(tmp_path / "config"), "/var/qmail/control"]


def test_qpsmtpd_config_wins_over_local_config(tmp_path, monkeypatch):
    override, local = tmp_path / "override", tmp_path / "config"
    override.mkdir()
    local.mkdir()
    write(override / "me", "override.example\n")
    write(local / "me", "local.example\n")
    write(local / "rcpthosts", "local-only.example\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QPSMTPD_CONFIG", str(override))
    monkeypatch.setenv("QMAIL", str(tmp_path / "qmail"))
    c = Config()
    assert c.get("me") == "override.example"
    assert c.get_list("rcpthosts") == ["local-only.example"]
    assert c.path("absent") == str(tmp_path / "qmail" / "control" / "absent")


def test_relative_dirs_are_fixed_at_construction(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    write(tmp_path / "config" / "me", "here.example\n")
    monkeypatch.chdir(tmp_path)
    c = Config(["config"])
    monkeypatch.chdir("/")
    assert c.get("me") == "here.example"


def test_first_directory_wins_per_file(cfg, dirs):
    first, second = dirs
    write(first / "me", "first.example\n")
    write(second / "me", "second.example\n")
    write(second / "rcpthosts", "only-in-second.example\n")
    assert cfg.get("me") == "first.example"
    assert cfg.path("me") == str(first / "me")
    assert cfg.get_list("rcpthosts") == ["only-in-second.example"]
    assert cfg.path("rcpthosts") == str(second / "rcpthosts")


def test_absent_file_resolves_to_last_directory(cfg, dirs, log):
    assert cfg.path("nothing") == str(dirs[1] / "nothing")
    assert cfg.get_list("nothing") == []
    assert cfg.get("nothing") is None
    assert log.at(6) == []


def test_absent_file_created_in_earlier_directory_needs_clear_cache(cfg, dirs):
    assert cfg.get("databytes") is None
    write(dirs[0] / "databytes", "100\n")
    assert cfg.get("databytes") is None
    cfg.clear_cache()
    assert cfg.get("databytes") == "100"


def test_directory_choice_is_memoised_until_clear_cache(cfg, dirs):
    first, second = dirs
    write(second / "badhelo", "second\n")
    assert cfg.get("badhelo") == "second"
    write(first / "badhelo", "first\n")
    assert cfg.path("badhelo") == str(second / "badhelo")
    assert cfg.get("badhelo") == "second"
    cfg.clear_cache()
    assert cfg.get("badhelo") == "first"


def test_empty_search_path_is_refused():
    with pytest.raises(ValueError):
        Config([])


# -- file format ---------------------------------------------------------------

def test_comments_blank_lines_and_whitespace(cfg, dirs):
    write(dirs[0] / "test_config_file",
          "# a comment\n\n   \n\t\n   # an indented comment\n"
          "   1st line with content  \t\n"
          "second # not a comment\r\n"
          "#last\n")
    assert cfg.get("test_config_file") == "1st line with content"
    assert cfg.get_list("test_config_file") == ["1st line with content",
                                               "second # not a comment"]


def test_relayclients_are_trimmed(cfg, dirs):
    write(dirs[0] / "relayclients", "127.0.0.1\n  192.0.  \n\t2001:DB8::1/32 \n")
    assert sorted(cfg.get_list("relayclients")) == ["127.0.0.1", "192.0.",
                                                   "2001:DB8::1/32"]


def test_no_trailing_newline_and_unicode_whitespace_kept(cfg, dirs):
    # Only ASCII blanks are trimmed (Perl's \s); a no-break space is data.
    write(dirs[0] / "smtpgreeting", "Hello\u00a0\n  there")
    assert cfg.get_list("smtpgreeting") == ["Hello\u00a0", "there"]


def test_undecodable_bytes_are_kept_not_fatal(cfg, dirs, log):
    write(dirs[0] / "badmailfrom", b"caf\xe9@example.com\nok@example.com\n")
    lines = cfg.get_list("badmailfrom")
    assert lines == ["caf\udce9@example.com", "ok@example.com"]
    assert lines[0].encode("utf-8", "surrogateescape") == b"caf\xe9@example.com"
    assert log.at(4) == []


def test_get_list_returns_a_copy(cfg, dirs):
    write(dirs[0] / "rcpthosts", "a.example\n")
    cfg.get_list("rcpthosts").append("b.example")
    assert cfg.get_list("rcpthosts") == ["a.example"]


# -- $include ------------------------------------------------------------------

def test_include_relative_name_uses_the_search_path(cfg, dirs):
    first, second = dirs
    write(first / "rcpthosts", "a.example\n$include morehosts\nz.example\n")
    write(second / "morehosts", "b.example\nc.example\n")
    assert cfg.get_list("rcpthosts") == ["a.example", "b.example", "c.example",
                                         "z.example"]


def test_include_absolute_path(cfg, dirs, tmp_path):
    elsewhere = write(tmp_path / "elsewhere", "# shared\n  x.example  \n")
    write(dirs[0] / "rcpthosts", f"$include {elsewhere}\n")
    assert cfg.get_list("rcpthosts") == ["x.example"]


def test_include_directory_sorted_without_dotfiles(cfg, dirs, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    write(parts / "b", "from-b\n")
    write(parts / "a", "from-a\n")
    write(parts / ".hidden", "hidden\n")
    (parts / "subdir").mkdir()
    write(parts / "subdir" / "c", "from-subdir\n")
    write(dirs[0] / "badrcptto", f"first\n$include {parts}\nlast\n")
    assert cfg.get_list("badrcptto") == ["first", "from-a", "from-b", "last"]


def test_nested_include(cfg, dirs):
    write(dirs[0] / "top", "1\n$include middle\n4\n")
    write(dirs[0] / "middle", "2\n$include bottom\n")
    write(dirs[1] / "bottom", "3\n")
    assert cfg.get_list("top") == ["1", "2", "3", "4"]


def test_same_file_included_twice_is_not_a_cycle(cfg, dirs, log):
    write(dirs[0] / "top", "$include common\n$include common\n")
    write(dirs[0] / "common", "x\n")
    assert cfg.get_list("top") == ["x", "x"]
    assert log.at(4) == []


def test_include_of_missing_file_adds_nothing(cfg, dirs, log):
    write(dirs[0] / "top", "a\n$include not-there\nb\n")
    assert cfg.get_list("top") == ["a", "b"]
    assert log.at(4) == []


def test_include_line_with_two_words_is_data(cfg, dirs):
    write(dirs[0] / "top", "$include two words\n")
    assert cfg.get_list("top") == ["$include two words"]


def test_include_cycle_logs_chain_and_returns_nothing(cfg, dirs, log):
    a = write(dirs[0] / "a", "from-a\n$include b\n")
    b = write(dirs[0] / "b", "from-b\n$include a\n")
    assert cfg.get_list("a") == []
    assert cfg.get("a") is None
    assert log.at(3) == ["Circular $include reference in config a:",
                         f"From {a}:", f"  includes {b}", f"  includes {a}"]
    # Logged once; repeated while the files are unchanged.
    cfg.get_list("a")
    assert len(log.at(3)) == 4


def test_self_include_through_directory_is_a_cycle(cfg, dirs, log):
    write(dirs[0] / "loop", f"$include {dirs[0]}\n")
    assert cfg.get_list("loop") == []
    assert "Circular $include reference in config loop:" in log.at(3)


def test_cycle_fixed_by_edit(cfg, dirs):
    write(dirs[0] / "a", "from-a\n$include b\n", mtime=1_000_000_000)
    b = write(dirs[0] / "b", "$include a\n")
    assert cfg.get_list("a") == []
    write(b, "from-b\n", mtime=2_000_000_000)
    assert cfg.get_list("a") == ["from-a", "from-b"]


# -- caching -------------------------------------------------------------------

def test_edited_file_is_reloaded(cfg, dirs):
    path = write(dirs[0] / "rcpthosts", "old.example\n", mtime=1_000_000_000)
    assert cfg.get_list("rcpthosts") == ["old.example"]
    write(path, "new.example\n", mtime=2_000_000_000)
    assert cfg.get_list("rcpthosts") == ["new.example"]


def test_same_size_same_second_edit_is_seen(cfg, dirs):
    path = write(dirs[0] / "me", "aaaa\n", mtime=1_000_000_000_000_000_000)
    assert cfg.get("me") == "aaaa"
    write(path, "bbbb\n", mtime=1_000_000_000_000_000_001)
    assert cfg.get("me") == "bbbb"


def test_file_replaced_by_rename_is_seen(cfg, dirs):
    path = write(dirs[0] / "me", "one\n", mtime=1_000_000_000)
    assert cfg.get("me") == "one"
    # Same size and mtime, but a new inode.
    replacement = write(dirs[0] / ".me.new", "two\n", mtime=1_000_000_000)
    os.replace(replacement, path)
    assert cfg.get("me") == "two"


def test_edited_include_is_reloaded(cfg, dirs):
    write(dirs[0] / "top", "$include part\n")
    part = write(dirs[0] / "part", "one\n", mtime=1_000_000_000)
    assert cfg.get_list("top") == ["one"]
    write(part, "two\n", mtime=2_000_000_000)
    assert cfg.get_list("top") == ["two"]


def test_file_added_to_included_directory_is_seen(cfg, dirs, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    write(parts / "a", "a\n")
    write(dirs[0] / "top", f"$include {parts}\n")
    assert cfg.get_list("top") == ["a"]
    write(parts / "b", "b\n")
    os.utime(parts, ns=(5_000_000_000, 5_000_000_000))
    assert cfg.get_list("top") == ["a", "b"]


def test_file_created_and_deleted_later(cfg, dirs):
    assert cfg.get_list("rcpthosts") == []
    path = write(dirs[1] / "rcpthosts", "late.example\n")
    assert cfg.get_list("rcpthosts") == ["late.example"]
    path.unlink()
    assert cfg.get_list("rcpthosts") == []


def test_unchanged_file_is_not_reopened(cfg, dirs, monkeypatch):
    write(dirs[0] / "top", "a\n$include part\n")
    write(dirs[0] / "part", "b\n")
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(config_module, "open", counting_open, raising=False)
    for _ in range(5):
        assert cfg.get_list("top") == ["a", "b"]
    assert sorted(opened) == [str(dirs[0] / "part"), str(dirs[0] / "top")]
    # Editing the included file re-reads that file only.
    opened.clear()
    write(dirs[0] / "part", "c\n", mtime=2_000_000_000)
    assert cfg.get_list("top") == ["a", "c"]
    assert opened == [str(dirs[0] / "part")]


def test_clear_cache_forgets_contents(cfg, dirs, monkeypatch):
    write(dirs[0] / "me", "x\n")
    cfg.get("me")
    opened = []
    real_open = open
    monkeypatch.setattr(config_module, "open",
                        lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k),
                        raising=False)
    cfg.get("me")
    assert opened == []
    cfg.clear_cache()
    cfg.get("me")
    assert opened == [str(dirs[0] / "me")]


def test_mtime_key_changes_with_file_and_includes(cfg, dirs):
    top = write(dirs[0] / "top", "$include part\n", mtime=1_000_000_000)
    part = write(dirs[0] / "part", "x\n", mtime=1_000_000_000)
    first = cfg.mtime_key("top")
    assert cfg.mtime_key("top") == first
    write(part, "y\n", mtime=2_000_000_000)
    second = cfg.mtime_key("top")
    assert second != first
    write(top, "$include part\nz\n", mtime=3_000_000_000)
    assert cfg.mtime_key("top") != second
    assert cfg.mtime_key("absent") == cfg.mtime_key("absent")


def test_mtime_key_for_cdb(cfg, dirs):
    key = cfg.mtime_key("morercpthosts.cdb")
    write_cdb(dirs[1] / "morercpthosts.cdb", {b"a": b""})
    assert cfg.mtime_key("morercpthosts.cdb") != key


# -- errors --------------------------------------------------------------------

def test_directory_in_place_of_file_logs_one_error(cfg, dirs, log):
    (dirs[0] / "rcpthosts").mkdir()
    assert cfg.get_list("rcpthosts") == []
    assert cfg.get("rcpthosts") is None
    path = dirs[0] / "rcpthosts"
    assert log.at(3) == [f"config: cannot read {path}: Is a directory"]
    path.rmdir()
    write(path, "fixed.example\n")
    assert cfg.get_list("rcpthosts") == ["fixed.example"]


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="root reads files whatever their mode; the directory "
                           "test above covers the unreadable case")
def test_permission_denied_logs_one_error_and_recovers(cfg, dirs, log):
    path = write(dirs[0] / "badhelo", "x\n")
    path.chmod(0)
    assert cfg.get_list("badhelo") == []
    assert cfg.get_list("badhelo") == []
    assert log.at(3) == [f"config: cannot read {path}: Permission denied"]
    path.chmod(0o644)   # only the mode changes
    assert cfg.get_list("badhelo") == ["x"]


def test_include_of_empty_directory_adds_nothing(cfg, dirs, log):
    (dirs[0] / "part").mkdir()
    write(dirs[0] / "top", f"a\n$include part\nb\n$include {dirs[0] / 'part'}/\n")
    assert cfg.get_list("top") == ["a", "b"]
    assert log.at(4) == []


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_include_is_logged_and_skipped(cfg, dirs, log):
    part = write(dirs[0] / "part", "secret\n")
    part.chmod(0)
    write(dirs[0] / "top", "a\n$include part\nb\n")
    assert cfg.get_list("top") == ["a", "b"]
    assert log.at(3) == [f"config: cannot read {part}: Permission denied"]


def test_missing_file_is_not_logged_above_debug(cfg, log):
    cfg.get_list("nope")
    cfg.get("nope")
    cfg.get_int("nope", 3)
    cfg.get_map("nope")
    assert log.at(6) == []
    assert any("absent" in m for m in log.at(7))


def test_silent_without_log_callable(dirs):
    (dirs[0] / "rcpthosts").mkdir()
    c = Config([str(d) for d in dirs])
    assert c.get_list("rcpthosts") == []


def test_log_callable_may_read_config_without_recursion(dirs):
    (dirs[0] / "loglevel").mkdir()   # unreadable: logs an error
    seen = []
    holder = {}

    def logger(level, message):
        seen.append(message)
        holder["config"].loglevel()
        holder["config"].get_list("rcpthosts")

    c = holder["config"] = Config([str(d) for d in dirs], log=logger)
    assert c.loglevel() == 4
    assert any("cannot read" in m for m in seen)


# -- the config hook -----------------------------------------------------------

def test_hook_list_wins_over_files(cfg, dirs):
    write(dirs[0] / "rcpthosts", "file.example\n")
    cfg.hook = lambda name: ["hook.example"] if name == "rcpthosts" else None
    assert cfg.get_list("rcpthosts") == ["hook.example"]
    assert cfg.get("rcpthosts") == "hook.example"


def test_hook_empty_list_wins(cfg, dirs):
    write(dirs[0] / "rcpthosts", "file.example\n")
    cfg.hook = lambda name: []
    assert cfg.get_list("rcpthosts") == []
    assert cfg.get("rcpthosts", "fallback") == "fallback"


def test_hook_none_falls_through(cfg, dirs):
    write(dirs[0] / "rcpthosts", "file.example\n")
    asked = []
    cfg.hook = lambda name: asked.append(name)
    assert cfg.get_list("rcpthosts") == ["file.example"]
    assert asked == ["rcpthosts"]


def test_hook_exception_is_logged_and_ignored(cfg, dirs, log):
    write(dirs[0] / "rcpthosts", "file.example\n")

    def broken(name):
        raise RuntimeError("database down")

    cfg.hook = broken
    assert cfg.get_list("rcpthosts") == ["file.example"]
    errors = log.at(3)
    assert len(errors) == 1
    assert "rcpthosts" in errors[0] and "database down" in errors[0]


def test_hook_wrong_type_is_logged_and_ignored(cfg, dirs, log):
    write(dirs[0] / "rcpthosts", "file.example\n")
    cfg.hook = lambda name: "not a list"
    assert cfg.get_list("rcpthosts") == ["file.example"]
    assert len(log.at(3)) == 1


def test_hook_not_asked_for_early_files(cfg, dirs):
    write(dirs[0] / "loglevel", "6\n")
    write(dirs[0] / "plugins", "rcpt_ok\n")
    asked = []

    def hook(name):
        asked.append(name)
        return ["9"]

    cfg.hook = hook
    assert cfg.loglevel() == 6
    assert cfg.get_list("plugins") == ["rcpt_ok"]
    assert cfg.get_list("logging") == []
    assert cfg.get_list("plugin_dirs") == []
    assert asked == []


def test_hook_value_feeds_typed_getters(cfg):
    cfg.hook = lambda name: {"databytes": ["1000"], "tls_before_auth": ["yes"]}.get(name)
    assert cfg.databytes() == 1000
    assert cfg.get_bool("tls_before_auth") is True


# -- maps ----------------------------------------------------------------------

def test_get_map_reads_cdb(cfg, dirs):
    write_cdb(dirs[1] / "morercpthosts.cdb",
              {b"example.com": b"", b"caf\xe9.example": b"\xff"})
    assert cfg.get_map("morercpthosts") == {"example.com": "",
                                            "caf\u00e9.example": "\u00ff"}
    assert cfg.path("morercpthosts.cdb") == str(dirs[1] / "morercpthosts.cdb")


def test_get_map_first_directory_wins(cfg, dirs):
    write_cdb(dirs[0] / "users.cdb", {b"!example.com-": b"first"})
    write_cdb(dirs[1] / "users.cdb", {b"!example.com-": b"second"})
    assert cfg.get_map("users") == {"!example.com-": "first"}


def test_get_map_missing_is_empty(cfg, log):
    assert cfg.get_map("morerelayclients") == {}
    assert log.at(6) == []


def test_get_map_corrupt_logs_error_once(cfg, dirs, log):
    path = write(dirs[0] / "morercpthosts.cdb", b"garbage" * 10)
    assert cfg.get_map("morercpthosts") == {}
    assert cfg.get_map("morercpthosts") == {}
    errors = log.at(3)
    assert len(errors) == 1
    assert errors[0].startswith(f"config: cannot read {path}: ")


def test_get_map_unreadable_logs_error(cfg, dirs, log):
    (dirs[0] / "morercpthosts.cdb").mkdir()
    assert cfg.get_map("morercpthosts") == {}
    assert log.at(3) == [f"config: cannot read {dirs[0] / 'morercpthosts.cdb'}: "
                         "Is a directory"]


def test_get_map_reloads_after_rebuild(cfg, dirs):
    path = dirs[0] / "morercpthosts.cdb"
    write_cdb(path, {b"old.example": b""})
    assert cfg.get_map("morercpthosts") == {"old.example": ""}
    write_cdb(path, {b"new.example": b""})   # a new inode, as a rebuild makes
    assert cfg.get_map("morercpthosts") == {"new.example": ""}


def test_get_map_ignores_hook_and_returns_copy(cfg, dirs):
    write_cdb(dirs[0] / "morercpthosts.cdb", {b"a.example": b""})
    cfg.hook = lambda name: ["hooked"]
    first = cfg.get_map("morercpthosts")
    first["b.example"] = ""
    assert cfg.get_map("morercpthosts") == {"a.example": ""}


# -- scalar getters and defaults -------------------------------------------------

def test_builtin_defaults(cfg, monkeypatch):
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: "fqdn.example")
    assert cfg.get("me") == "fqdn.example"
    assert cfg.me() == "fqdn.example"
    assert cfg.get("timeout") == "1200"
    assert cfg.get("timeout", "30") == "1200"
    assert cfg.get("undefined-test") is None
    assert cfg.get("undefined-test", "fallback") == "fallback"


def test_me_falls_back_to_gethostname(cfg, monkeypatch):
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: "")
    monkeypatch.setattr(config_module.socket, "gethostname", lambda: "short")
    assert cfg.me() == "short"


def test_me_from_file(cfg, dirs, monkeypatch):
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: "fqdn.example")
    write(dirs[1] / "me", "host.example.org")
    assert cfg.me() == "host.example.org"


def test_zero_is_a_value(cfg, dirs):
    write(dirs[0] / "zero-test", "0\n")
    assert cfg.get("zero-test", "5") == "0"
    assert cfg.get_int("zero-test", 5) == 0


def test_get_int(cfg, dirs, log):
    write(dirs[0] / "num", " -12 \n")
    assert cfg.get_int("num", 7) == -12
    assert cfg.get_int("missing", 7) == 7
    assert cfg.get_int("timeout", 7) == 1200
    path = write(dirs[0] / "junk", "12 seconds\n")
    assert cfg.get_int("junk", 7) == 7
    [warning] = log.at(4)
    assert str(path) in warning and "'12 seconds'" in warning


def test_get_bool(cfg, dirs, log):
    for word in ("1", "yes", "TRUE", "On"):
        write(dirs[0] / "flag", word + "\n", mtime=None)
        cfg.clear_cache()
        assert cfg.get_bool("flag") is True, word
    for word in ("0", "no", "false", "OFF"):
        write(dirs[0] / "flag", word + "\n")
        cfg.clear_cache()
        assert cfg.get_bool("flag", True) is False, word
    assert cfg.get_bool("missing") is False
    assert cfg.get_bool("missing", True) is True
    cfg.hook = lambda name: [""]
    assert cfg.get_bool("flag", True) is False
    cfg.hook = None
    write(dirs[0] / "flag", "maybe\n")
    cfg.clear_cache()
    assert cfg.get_bool("flag", True) is True
    assert len(log.at(4)) == 1 and "maybe" in log.at(4)[0]


def test_databytes(cfg, dirs, log):
    assert cfg.databytes() == 0
    # Absent names resolve to the last directory (memoised), so add it there.
    path = write(dirs[1] / "databytes", "5000000\n", mtime=1_000_000_000)
    assert cfg.databytes() == 5000000
    write(path, "lots\n", mtime=2_000_000_000)
    assert cfg.databytes() == 0
    [warning] = log.at(4)
    assert "databytes" in warning and "'lots'" in warning and str(path) in warning
    write(path, "-1\n", mtime=3_000_000_000)
    assert cfg.databytes() == 0
    assert len(log.at(4)) == 2


def test_timeouts(cfg, dirs):
    assert cfg.command_timeout() == 1200
    assert cfg.data_timeout() == 1200
    write(dirs[1] / "timeout", "300\n")
    assert cfg.command_timeout() == 300
    assert cfg.data_timeout() == 300
    write(dirs[1] / "timeoutsmtpd", "60\n")
    assert cfg.command_timeout() == 60
    assert cfg.data_timeout() == 300


def test_timeout_garbage_falls_through(cfg, dirs, log):
    write(dirs[0] / "timeoutsmtpd", "soon\n")
    write(dirs[0] / "timeout", "0\n")
    assert cfg.command_timeout() == 1200
    assert cfg.data_timeout() == 1200
    assert len(log.at(4)) == 1


def test_loglevel(cfg, dirs, log):
    assert cfg.loglevel() == 4
    path = write(dirs[1] / "loglevel", "7\n", mtime=1_000_000_000)
    assert cfg.loglevel() == 7
    write(path, "debug\n", mtime=2_000_000_000)
    assert cfg.loglevel() == 4
    write(path, "-1\n", mtime=3_000_000_000)
    assert cfg.loglevel() == 4


def test_size_threshold_and_smtpgreeting(cfg, dirs):
    assert cfg.size_threshold() == 0
    assert cfg.smtpgreeting() is None
    write(dirs[1] / "size_threshold", "10000\n")
    write(dirs[1] / "smtpgreeting", "  mx.example ESMTP ready  \n")
    assert cfg.size_threshold() == 10000
    assert cfg.smtpgreeting() == "mx.example ESMTP ready"


# -- spool_dir -------------------------------------------------------------------

def test_spool_dir_default_is_home_tmp(cfg, tmp_path, monkeypatch, log):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert cfg.spool_dir() == f"{home}/tmp/"
    assert stat.S_IMODE((home / "tmp").stat().st_mode) == 0o700
    assert log.at(4) == []


def test_spool_dir_configured_with_tilde_and_perms(cfg, dirs, tmp_path, monkeypatch, log):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    write(dirs[0] / "spool_dir", "~/spool\n")
    write(dirs[0] / "spool_perms", "0750\n")
    old = os.umask(0o077)     # the mode is set exactly, whatever the umask
    try:
        assert cfg.spool_dir() == f"{home}/spool/"
    finally:
        os.umask(old)
    assert stat.S_IMODE((home / "spool").stat().st_mode) == 0o750
    assert log.at(4) == []


def test_spool_dir_wrong_permissions_warn(cfg, dirs, tmp_path, log):
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o755)
    write(dirs[0] / "spool_dir", f"{spool}/\n")
    assert cfg.spool_dir() == f"{spool}/"
    assert log.at(4) == [f"Permissions on spool_dir {spool}/ are not 0700"]
    assert stat.S_IMODE(spool.stat().st_mode) == 0o755


def test_spool_dir_cached_until_clear_cache(cfg, dirs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    path = write(dirs[0] / "spool_dir", f"{one}\n", mtime=1_000_000_000)
    assert cfg.spool_dir() == f"{one}/"
    write(path, f"{two}\n", mtime=2_000_000_000)
    assert cfg.spool_dir() == f"{one}/"
    assert not two.exists()
    cfg.clear_cache()
    assert cfg.spool_dir() == f"{two}/"
    assert two.is_dir()


def test_spool_perms_garbage_warns_and_uses_0700(cfg, dirs, tmp_path, log):
    write(dirs[0] / "spool_dir", f"{tmp_path / 'spool'}\n")
    write(dirs[0] / "spool_perms", "rwx------\n")
    cfg.spool_dir()
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    [warning] = log.at(4)
    assert "spool_perms" in warning and "rwx------" in warning


def test_spool_dir_that_cannot_be_created(cfg, dirs, tmp_path, log):
    blocker = write(tmp_path / "file", "not a directory\n")
    write(dirs[0] / "spool_dir", f"{blocker}\n")
    with pytest.raises(OSError, match="Could not create spool_dir"):
        cfg.spool_dir()
    assert len(log.at(3)) == 1


# -- recheck: stat() at most once per interval (the forkserver's workers) ----------------------

def test_recheck_spaces_out_the_stat_calls(cfg, dirs, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(config_module.time, "monotonic", lambda: clock[0])
    first, _ = dirs
    write(first / "me", "one.example\n", mtime=1_000_000_000)
    cfg.recheck = 1.0
    assert cfg.get("me") == "one.example"
    write(first / "me", "two.example\n", mtime=2_000_000_000)
    clock[0] += 0.5
    assert cfg.get("me") == "one.example"       # checked half a second ago
    clock[0] += 0.6
    assert cfg.get("me") == "two.example"       # a second later: seen


def test_without_recheck_an_edit_shows_at_the_next_lookup(cfg, dirs):
    first, _ = dirs
    write(first / "me", "one.example\n", mtime=1_000_000_000)
    assert cfg.get("me") == "one.example"
    write(first / "me", "two.example\n", mtime=2_000_000_000)
    assert cfg.get("me") == "two.example"
