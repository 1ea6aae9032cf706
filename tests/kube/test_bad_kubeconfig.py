"""Ordinary mistakes with the cluster connection are environment errors (exit 3) with a hint, never
"internal error": kubeconfigs that are binary, malformed YAML, a list or not a kubeconfig, and an API
server address that answers with a web page (a proxy or login portal, here a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_two_line_error

KUBECONFIG = """apiVersion: v1
kind: Config
current-context: x
clusters: [{{name: c, cluster: {{server: "{server}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: default}}}}]
"""


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x01\x02\xff\xfe binary", "kubeconfig {path} is not a text file"),
    (b"clusters: [1\n", "kubeconfig {path} is not valid YAML (line 2)"),
    (b"- a\n- b\n", "kubeconfig {path} is a YAML list, not a mapping"),
    (b"foo: 1\n", "{path} is not a kubeconfig (no clusters, contexts or users)"),
    (b"clusters: {a: 1}\ncontexts: []\n", "kubeconfig {path}: 'clusters' must be a list"),
], ids=["binary", "malformed", "list", "not-a-kubeconfig", "clusters-not-a-list"])
def test_bad_kubeconfig_is_an_environment_error(cli, tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_bytes(content)
    res = cli("tap", "-n", "default", "--kubeconfig", str(path), "--dry-run")
    assert res.code == 3, res.err
    assert_two_line_error(res.err, message.format(path=path))


class _Html(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_api_server_answering_html_is_an_environment_error(cli, tmp_path: Path, html_server: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(server=html_server))
    res = cli("tap", "-n", "default", "--kubeconfig", str(path), "--dry-run")
    assert res.code == 3, res.err
    assert_two_line_error(res.err, f"the server at {html_server} answered")
    assert "not Kubernetes JSON (text/html" in res.err
    assert "internal error" not in res.err
