"""``qnet-lint probe`` against a node started here and against a plain TLS web site."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from qnet.crypto.primitives import MLKEM768Key, X25519Key
from qnet.htx import transport as T
from qnet.htx.session import HtxConfig
from qnet.htx.tls import make_self_signed
from qnet.lint.cli import main
from qnet.lint.probe import NodeKeys, ProbeOptions, probe, probe_async
from qnet.lint.report import Result

# A test-friendly cadence: padding every 50-200 ms and PINGs every 100-400 ms when idle.
FAST = HtxConfig(ping_interval=(0.1, 0.4), padding_gap=(0.05, 0.2))
OBSERVE = 2.5


class Node:
    def __init__(self, session_config: HtxConfig = FAST) -> None:
        self.link = X25519Key.generate()
        self.mlkem = MLKEM768Key.generate()
        self.ticket = X25519Key.generate()
        cert, key = make_self_signed("www.example.com")
        self.config = T.ServerConfig(
            link_private=self.link.private_bytes,
            mlkem=self.mlkem,
            ticket_keys={3: self.ticket},
            certificate_chain=(cert,),
            certificate_key=key,
            session_config=session_config,
        )

    def keys(self) -> NodeKeys:
        return NodeKeys(
            self.ticket.public_bytes, 3, self.link.public_bytes, self.mlkem.public_bytes
        )


async def _idle(link: T.HtxLink) -> None:
    await trio.sleep_forever()


def run_against_node(node: Node, keys: NodeKeys | None) -> list[Result]:
    async def go() -> list[Result]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(T.serve_tcp, _idle, node.config)
            port = listeners[0].socket.getsockname()[1]
            opts = ProbeOptions(
                host="127.0.0.1",
                port=port,
                server_name="www.example.com",
                keys=keys,
                observe=OBSERVE,
                timeout=5,
            )
            results = await probe_async(opts)
            nursery.cancel_scope.cancel()
        return results

    return trio.run(go)


def statuses(results: list[Result]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in results:
        out[r.check.id] = "fail" if "fail" in (out.get(r.check.id), r.status) else r.status
    return out


def test_node_passes_every_check() -> None:
    node = Node()
    results = run_against_node(node, node.keys())
    bad = [f"{r.check.id}: {r.reason}" for r in results if r.status != "pass"]
    assert not bad, bad
    assert len(statuses(results)) == 17


def test_node_without_keys_checks_only_the_web_site() -> None:
    s = statuses(run_against_node(Node(), None))
    assert all(s[c] == "pass" for c in s if c.startswith(("PROBE-TLS", "PROBE-WEB", "PROBE-H2")))
    assert all(s[c] == "skip" for c in s if c.startswith(("PROBE-TICKET", "PROBE-INNER")))


def test_wrong_link_key_fails_the_inner_handshake() -> None:
    node = Node()
    keys = node.keys()
    wrong = NodeKeys(keys.ticket_public, 3, X25519Key.generate().public_bytes, keys.mlkem_public)
    s = statuses(run_against_node(node, wrong))
    assert s["PROBE-TICKET-001"] == "pass"
    assert s["PROBE-INNER-001"] == "fail"
    assert s["PROBE-PING-001"] == "fail"


def test_default_cadence_is_too_slow_to_judge_in_a_short_window() -> None:
    node = Node(HtxConfig())
    s = statuses(run_against_node(node, node.keys()))
    assert s["PROBE-PING-001"] == "pass" and s["PROBE-KEYUPDATE-001"] == "pass"
    assert s["PROBE-CADENCE-001"] == "skip" and s["PROBE-CADENCE-002"] == "skip"


@contextmanager
def plain_tls_site(tmp: Path) -> Iterator[int]:
    """Python's http.server behind ssl, self-signed, serving a one-page site."""
    root = tmp / "site"
    root.mkdir()
    (root / "index.html").write_text("<html><body><h1>Welcome</h1></body></html>\n")
    cert, key = make_self_signed("www.example.com")
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols(["http/1.1"])

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_plain_site_passes_web_checks_and_fails_tunnel_checks(tmp_path: Path) -> None:
    node = Node()  # keys of a node that is not there: the site cannot know them
    with plain_tls_site(tmp_path) as port:
        opts = ProbeOptions(
            host="127.0.0.1",
            port=port,
            server_name="www.example.com",
            keys=node.keys(),
            observe=0.5,
            timeout=5,
        )
        s = statuses(probe(opts))
    for cid in (
        "PROBE-TLS-001",
        "PROBE-TLS-002",
        "PROBE-WEB-001",
        "PROBE-WEB-002",
        "PROBE-WEB-003",
        "PROBE-WEB-004",
        "PROBE-WEB-005",
    ):
        assert s[cid] == "pass", cid
    assert s["PROBE-H2-001"] == "skip"  # it does not speak h2, like many sites
    for cid in (
        "PROBE-TICKET-001",
        "PROBE-TICKET-002",
        "PROBE-INNER-001",
        "PROBE-FRAME-001",
        "PROBE-PING-001",
        "PROBE-KEYUPDATE-001",
    ):
        assert s[cid] == "fail", cid
    assert s["PROBE-CADENCE-001"] == "skip"


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with plain_tls_site(tmp_path) as port:
        assert main(["probe", f"127.0.0.1:{port}", "--format", "json"]) in (0, 1)
    out = capsys.readouterr().out
    assert '"PROBE-WEB-001"' in out
    assert main(["probe", "no-port-here"]) == 2
    assert main(["probe", "127.0.0.1:1", "--key-id", "3"]) == 2
