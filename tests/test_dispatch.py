"""Plugin loading and the hook table (§5.6, §9.2)."""

import os

import pytest

from conftest import PLUGIN_DIR, TEST_PLUGINS
from qpsmtpd.app import App
from qpsmtpd.constants import DECLINED, DENY
from qpsmtpd.plugin import PluginError, plugin_name



@pytest.mark.parametrize("config_name, escaped", [
    ("ident/geoip", "ident::geoip"),
    ("queue/qmail-queue", "queue::qmail_2dqueue"),
    ("relay:0", "relay_3a0"),
    ("auth/auth_flat_file", "auth::auth_flat_file"),
    ("logging/file:1", "logging::file_3a1"),
    ("dir/1name", "dir::_31name"),
])
def test_plugin_name_escaping(config_name, escaped):
    assert plugin_name(config_name) == escaped


def write_plugin(directory, name, body):
    path = directory / (name + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


PLUGIN = '''"""A plugin for tests."""
from qpsmtpd.plugin import Plugin
from qpsmtpd.constants import DENY

class P(Plugin):
    def register(self, *args):
        self.words = args
    def hook_mail(self, session, sender, params):
        return DENY, " ".join(self.words)
'''


@pytest.fixture
def plugin_dir(tmp_path):
    return tmp_path / "plugins"


def test_dash_in_name_maps_to_underscore_file_and_instances(make_app, smtp_session, plugin_dir):
    write_plugin(plugin_dir, "sub/my_check", PLUGIN)
    app = make_app(["sub/my-check:0 first", "sub/my-check:1 second"],
                   plugin_dirs=[str(plugin_dir)])
    names = [p.name for p in app.dispatcher.plugins]
    assert names == ["sub::my_2dcheck_3a0", "sub::my_2dcheck_3a1"]
    client = smtp_session(app=app)
    client.cmd("HELO x")
    assert client.cmd("MAIL FROM:<a@b.example>") == (550, ["first"])
    assert "sub::my_2dcheck_3a0" in app.dispatcher.hook_order()


def test_missing_plugin_is_a_clear_error(make_app, plugin_dir):
    plugin_dir.mkdir()
    with pytest.raises(PluginError, match="Plugin nothere not found in our plugin dirs"):
        make_app(["nothere"], plugin_dirs=[str(plugin_dir)])


def test_unsafe_characters_refused(make_app):
    with pytest.raises(PluginError, match="unsafe characters in config line"):
        make_app(["relay\x01"])


def test_plugin_with_syntax_error(make_app, plugin_dir):
    write_plugin(plugin_dir, "broken", "this is not python\n")
    with pytest.raises(PluginError, match="cannot load plugin file"):
        make_app(["broken"], plugin_dirs=[str(plugin_dir)])


def test_register_failure_stops_loading(make_app, plugin_dir):
    write_plugin(plugin_dir, "picky", PLUGIN.replace(
        "self.words = args", "raise ValueError('needs a zone')"))
    with pytest.raises(PluginError, match="plugin picky failed to register: ValueError"):
        make_app(["picky"], plugin_dirs=[str(plugin_dir)])


def test_odd_key_value_arguments(make_app, plugin_dir):
    write_plugin(plugin_dir, "pairs", '''
from qpsmtpd.plugin import Plugin
class P(Plugin):
    pass
''')
    with pytest.raises(PluginError, match="Bad arguments for pairs"):
        make_app(["pairs reject"], plugin_dirs=[str(plugin_dir)])
    app = make_app(["pairs reject 0 reject_type temp"], plugin_dirs=[str(plugin_dir)])
    assert app.dispatcher.plugins[0].args == {"reject": "0", "reject_type": "temp"}


def test_register_returning_false_disables_hooks(make_app, plugin_dir):
    write_plugin(plugin_dir, "optional", PLUGIN.replace("self.words = args", "return False"))
    app = make_app(["optional"], plugin_dirs=[str(plugin_dir)])
    assert not app.dispatcher.has_hook("mail")


def test_unknown_hook_in_register_hook(make_app, plugin_dir):
    write_plugin(plugin_dir, "badhook", PLUGIN.replace(
        "self.words = args", "self.register_hook('rset', self.hook_mail)"))
    with pytest.raises(PluginError, match="Invalid hook: rset"):
        make_app(["badhook"], plugin_dirs=[str(plugin_dir)])


def test_hooks_run_in_config_order(make_app, smtp_session):
    app = make_app(["returns mail DENY second", "returns mail DENY first"],
                   plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
    assert app.dispatcher.hook_order() == "mail: returns, returns"
    client = smtp_session(app=app)
    client.cmd("HELO x")
    assert client.cmd("MAIL FROM:<a@b.example>") == (550, ["second"])


def test_per_plugin_loglevel(make_app, smtp_session):
    app = make_app(["relay loglevel 0"], config={"loglevel": "0"})
    client = smtp_session(app=app, remote_ip="192.0.2.99")
    assert any("(connect) relay:" in line for line in client.log)


def test_shared_helpers(make_app, smtp_session):
    app = make_app(["returns rcpt OK"], plugin_dirs=[TEST_PLUGINS, PLUGIN_DIR])
    plugin = app.dispatcher.plugins[0]
    client = smtp_session(app=app)
    client.cmd("NOOP")
    session = client.session
    plugin.args = {"reject": "naughty", "reject_type": "temp"}
    assert plugin.get_reject(session, "go away", "listed") == DECLINED
    assert session.connection.notes["naughty"] == ["(returns) go away"]
    assert session.connection.notes["naughty_reject_type"] == "temp"
    assert plugin.is_naughty(session) == ["(returns) go away"]
    plugin.args = {"reject": "0"}
    assert plugin.get_reject(session, "x") == DECLINED
    plugin.args = {"reject_type": "disconnect"}
    assert plugin.get_reject(session, "bye")[0] == 903
    plugin.args = {}
    assert plugin.get_reject(session, "no") == (DENY, "no")
    assert plugin.adjust_karma(session, -2) == -2
    assert plugin.adjust_karma(session, 1) == 1
    assert session.connection.notes["karma"] == -1
    assert not plugin.is_immune(session)
    session.connection.relay_client = True
    assert plugin.is_immune(session)
    assert any("fail, NAUGHTY, listed" in line for line in client.log)
    assert any("karma -2 (-2)" in line for line in client.log)
    assert any("skip, relay client" in line for line in client.log)


@pytest.mark.parametrize("ip, valid", [
    ("1.2.3.4", True), ("10.255.1.2", True), ("192.168.1.255", True),
    ("0.0.0.0", False), ("255.255.255.255", False), ("1.2.3.256", False),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True), ("2001:db8::fffj", False),
])
def test_is_valid_ip(ip, valid):
    from qpsmtpd.plugin import Plugin
    assert Plugin.is_valid_ip(ip) is valid


@pytest.mark.parametrize("ip, local", [
    ("127.0.0.1", True), ("::1", True), ("2607:f060:b008:feed::127.0.0.1", True),
    ("127.0.0.2", True), ("128.0.0.1", False), ("::2", False),
])
def test_is_localhost(ip, local):
    from qpsmtpd.plugin import Plugin
    assert Plugin.is_localhost(ip) is local


def test_sample_config_loads():
    """The shipped config/ loads with the shipped plugins."""
    root = os.path.dirname(PLUGIN_DIR)
    app = App([os.path.join(root, "config")], log_sink=lambda line: None,
              plugin_dirs=[PLUGIN_DIR]).load_plugins()
    assert app.dispatcher.has_hook("queue")
    assert app.config.me() == "mail.example.test"
