"""http_config: configuration from a real HTTP server on 127.0.0.1 -
order of URLs, filtering, fall-through to the files (404, errors, a slow
server), the cache, and a value reaching the SMTP greeting."""

import http.server
import socket
import threading
import time

import pytest

from qpsmtpd.plugin import PluginError


class ConfigServer:
    """A threaded HTTP server answering from ``pages``: path -> (status,
    body[, delay seconds]). Unknown paths get 404. Every request path is
    recorded in ``requests``."""

    def __init__(self):
        self.pages = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                status, body, *delay = server.pages.get(self.path, (404, b"not found"))
                if delay:
                    time.sleep(delay[0])
                if isinstance(body, str):
                    body = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass   # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def count(self, path):
        return self.requests.count(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    config_server = ConfigServer()
    yield config_server
    config_server.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- values reaching the session ---------------------------------------------

def test_me_from_http_reaches_the_greeting_and_helo(smtp_session, make_app, server):
    server.pages["/a/me"] = (200, "mx.http.example\n")
    client = smtp_session(app=make_app([f"http_config {server.base}/a/"]))
    assert client.greeting.code == 220
    assert client.greeting.lines[0].startswith("mx.http.example ESMTP qpsmtpd")
    assert client.cmd("HELO c.example").lines[0].startswith("mx.http.example Hi ")
    assert server.count("/a/me") == 1     # cached: greeting and HELO asked once


def test_smtpgreeting_from_http(smtp_session, make_app, server):
    server.pages["/a/smtpgreeting"] = (200, "# greeting\r\n\r\n  Welcome via HTTP  \r\n")
    client = smtp_session(app=make_app([f"http_config {server.base}/a/"]))
    assert client.greeting == (220, ["Welcome via HTTP ESMTP"])


def test_404_falls_through_to_the_file(smtp_session, make_app, server):
    client = smtp_session(app=make_app([f"http_config {server.base}/a/"],
                                       {"smtpgreeting": "From the file"}))
    assert client.greeting == (220, ["From the file ESMTP"])
    assert client.cmd("HELO c.example").lines[0].startswith("mx.example.org Hi ")
    assert server.count("/a/smtpgreeting") == 1
    assert server.count("/a/me") == 1
    assert not any("http_config: error" in line for line in client.log)


# -- order and filtering -----------------------------------------------------

def test_first_url_with_values_wins(make_app, server):
    server.pages["/a/rcpthosts"] = (200, "# nothing but a comment\n\n   \n")
    server.pages["/b/rcpthosts"] = (200, "# ours\r\n  example.org  \r\n\r\nexample.net\r"
                                         "example.com\n#example.biz\n")
    server.pages["/c/rcpthosts"] = (200, "never.example\n")
    server.pages["/b/me"] = (204, "")
    server.pages["/c/me"] = (200, "mx.c.example")
    app = make_app([f"http_config {server.base}/missing/ {server.base}/a/ "
                    f"{server.base}/b/ {server.base}/c/"],
                   {"rcpthosts": ["file.example"]})
    assert app.config.get_list("rcpthosts") == ["example.org", "example.net", "example.com"]
    assert server.count("/missing/rcpthosts") == 1
    assert server.count("/c/rcpthosts") == 0
    assert app.config.get("me") == "mx.c.example"       # 204 is no answer


def test_query_string_urls_and_quoting(make_app, server):
    server.pages["/qp?config=databytes"] = (200, "1000\n")
    server.pages["/qp?config=odd%20name"] = (200, "yes\n")
    app = make_app([f"http_config {server.base}/qp?config="])
    assert app.config.databytes() == 1000
    assert app.config.get("odd name") == "yes"


# -- the cache ---------------------------------------------------------------

def test_answers_and_misses_are_cached(make_app, server):
    server.pages["/a/databytes"] = (200, "1000\n")
    app = make_app([f"http_config {server.base}/a/ cache 0.3"], {"badhelo": ["x"]})
    for _ in range(3):
        assert app.config.databytes() == 1000
        assert app.config.get_list("badhelo") == ["x"]
    assert server.count("/a/databytes") == 1
    assert server.count("/a/badhelo") == 1
    server.pages["/a/databytes"] = (200, "2000\n")
    assert app.config.databytes() == 1000
    time.sleep(0.35)
    assert app.config.databytes() == 2000
    assert server.count("/a/databytes") == 2


def test_cache_0_asks_every_time(make_app, server):
    server.pages["/a/databytes"] = (200, "1000\n")
    app = make_app([f"http_config {server.base}/a/ cache 0"])
    before = server.count("/a/databytes")
    for _ in range(3):
        assert app.config.databytes() == 1000
    assert server.count("/a/databytes") == before + 3


# -- errors ------------------------------------------------------------------

def test_slow_server_times_out_and_the_file_answers(smtp_session, make_app, server):
    server.pages["/slow/me"] = (200, "mx.slow.example\n", 2)
    server.pages["/slow/smtpgreeting"] = (200, "slow greeting\n", 2)
    log = []
    app = make_app([f"http_config {server.base}/slow/ timeout 0.3"],
                   {"smtpgreeting": "file greeting"}, log=log)
    started = time.monotonic()
    client = smtp_session(app=app)
    assert client.greeting == (220, ["file greeting ESMTP"])
    assert client.cmd("HELO c.example").lines[0].startswith("mx.example.org Hi ")
    # one timeout, then the URL is skipped for the cache time
    assert time.monotonic() - started < 1.5
    errors = [line for line in log if "http_config: error," in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"error, {server.base}/slow/smtpgreeting: timed out")
    assert server.count("/slow/me") == 0


def test_server_errors_fall_through_to_the_next_url(make_app, server):
    server.pages["/a/me"] = (500, "oops")
    server.pages["/b/me"] = (200, "mx.b.example")
    server.pages["/b/timeout"] = (200, "30")
    log = []
    app = make_app([f"http_config {server.base}/a/ {server.base}/b/"], log=log)
    assert app.config.get("me") == "mx.b.example"
    assert app.config.command_timeout() == 30
    errors = [line for line in log if "http_config: error," in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"(config) http_config: error, {server.base}/a/me: status 500")
    assert server.count("/a/timeout") == 0        # skipped after the error


def test_refused_connection_falls_through(make_app, server):
    log = []
    app = make_app([f"http_config http://127.0.0.1:{free_port()}/ cache 0"],
                   {"databytes": "5000"}, log=log)
    assert app.config.databytes() == 5000
    assert any("http_config: error, http://127.0.0.1:" in line and "databytes" in line
               for line in log)


def test_oversize_answer_is_an_error(make_app, server):
    server.pages["/a/rcpthosts"] = (200, b"x" * (1024 * 1024 + 1))
    log = []
    app = make_app([f"http_config {server.base}/a/"], {"rcpthosts": ["file.example"]},
                   log=log)
    assert app.config.get_list("rcpthosts") == ["file.example"]
    assert any(line.endswith("/a/rcpthosts: answer longer than 1048576 bytes")
               for line in log)


@pytest.mark.parametrize("line, message", [
    ("http_config", "no URL given"),
    ("http_config cache 60", "no URL given"),
    ("http_config ftp://example.net/", "'ftp://example.net/' is not an http"),
    ("http_config http://example.net/ cache", "cache needs a value"),
    ("http_config http://example.net/ cache soon", "cache must be a number"),
    ("http_config http://example.net/ cache -1", "cache must be a number"),
    ("http_config http://example.net/ timeout 0", "timeout must be a number of seconds above 0"),
    ("http_config http://example.net/ timeout nan", "timeout must be a number"),
])
def test_bad_arguments_stop_start_up(make_app, line, message):
    with pytest.raises(PluginError, match=message):
        make_app([line])
