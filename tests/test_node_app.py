"""The node program: a real ``qnet node`` process, start-up refusals, metrics, graceful stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from qnet.htx.quic import dial_quic
from qnet.htx.transport import HtxLink, dial_tcp
from qnet.node import app
from qnet.node.config import parse_config
from qnet.node.keys import KeyStore
from qnet.node.metrics import NodeMetrics, serve_metrics

SERVER_NAME = "www.example.com"


def _write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
nickname = "t1"
data_dir = "data"
roles = ["relay", "exit"]
log_format = "text"
[htx]
host = "127.0.0.1"
tcp_port = 0
quic_port = 0
server_name = "{SERVER_NAME}"
[directory]
epoch_seconds = 60
{extra}
"""
    )
    return path


class Proc:
    def __init__(self, config: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "qnet.cli", "node", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if "ready" not in line:
            self.p.kill()
            raise AssertionError(f"no ready line: {line!r} {self.p.stderr.read()!r}")  # type: ignore[union-attr]
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        self.tcp = int(fields["tcp"])
        self.quic = int(fields["quic"]) if fields["quic"] != "-" else None
        self.metrics = int(fields["metrics"]) if fields["metrics"] != "-" else None


@pytest.fixture
def node_proc(tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    config = _write_config(tmp_path, "[metrics]\nenabled = true\nport = 0\n")
    proc = Proc(config)
    try:
        yield proc, tmp_path / "data"
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait()


async def _check_link(link: HtxLink) -> None:
    await link.ping()
    stream = await link.open_stream()
    await stream.send_all(b"hello")
    # The placeholder link service ends every stream at once.
    with trio.fail_after(5):
        while await stream.receive_some():
            pass


def _http_get(port: int, target: str = "/metrics") -> tuple[int, str]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_node_process_serves_htx_and_stops_on_sigterm(node_proc: tuple[Proc, Path]) -> None:
    proc, data_dir = node_proc
    store = KeyStore.open(data_dir, server_name=SERVER_NAME, now=time.time())
    assert (data_dir / "keys" / "link.key").stat().st_mode & 0o777 == 0o600

    async def main() -> None:
        async with dial_tcp(store.peer_info("127.0.0.1", proc.tcp, SERVER_NAME)) as link:
            await _check_link(link)
        assert proc.quic is not None
        async with dial_quic(store.peer_info("127.0.0.1", proc.quic, SERVER_NAME)) as link:
            await _check_link(link)

    trio.run(main)

    assert proc.metrics is not None
    status, body = _http_get(proc.metrics)
    assert status == 200
    for name in (
        "qnet_circuits",
        "qnet_streams",
        "qnet_cells_forwarded_total",
        "qnet_bytes_forwarded_total",
        "qnet_htx_sessions",
        "qnet_htx_handshake_failures_total",
        "qnet_consensus_age_seconds",
    ):
        assert f"\n{name} " in body, name
    assert _http_get(proc.metrics, "/")[0] == 404

    # Mix keys of this epoch and the next were made at start.
    epoch = int(time.time() // 60)
    assert {epoch, epoch + 1} <= set(store.mix_epochs_on_disk())

    t0 = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    _, err = proc.p.communicate()
    assert "stopped" in err and "ready" in err


def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    proc = Proc(_write_config(tmp_path))
    try:
        assert proc.metrics is None  # off by default
        proc.p.send_signal(signal.SIGINT)
        assert proc.p.wait(timeout=10) == 0
    finally:
        if proc.p.poll() is None:
            proc.p.kill()


def test_bad_config_exits_2_before_anything(tmp_path: Path) -> None:
    config = _write_config(tmp_path, "[limits]\nmax_links = -3\n")
    r = subprocess.run(
        [sys.executable, "-m", "qnet.cli", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "limits.max_links = -3" in r.stderr and "1.." in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "data").exists()  # not even the data directory was made


def test_loose_key_file_exits_2(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    store = KeyStore.open(tmp_path / "data", server_name=SERVER_NAME, now=time.time())
    (store.keys_dir / "identity.key").chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "qnet.cli", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "identity.key" in r.stderr and "644" in r.stderr


# --- in process ---


def _in_process_node(tmp_path: Path, extra: str = "", **kw: object) -> app.Node:
    config = parse_config(
        f"""
[node]
data_dir = "data"
[htx]
host = "127.0.0.1"
tcp_port = 0
server_name = "{SERVER_NAME}"
{extra}
""",
        tmp_path,
    )
    keys = KeyStore.open(config.node.data_dir, server_name=SERVER_NAME, now=time.time())
    return app.Node(config, keys, **kw)  # type: ignore[arg-type]


def test_metrics_off_by_default_and_link_service_hook(tmp_path: Path) -> None:
    seen: list[bytes] = []

    class Recorder:
        async def handle_link(self, node: app.Node, link: HtxLink) -> None:
            seen.append(link.remote_static)
            assert node.metrics.htx_sessions._value.get() == 1  # type: ignore[attr-defined]
            await node.stopping.wait()

    node = _in_process_node(tmp_path, link_service=Recorder())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(node.run)
            assert ports.metrics is None and ports.quic is None
            peer = node.keys.peer_info("127.0.0.1", ports.tcp, SERVER_NAME)
            async with dial_tcp(peer) as link:
                with trio.fail_after(5):
                    while not seen:
                        await trio.sleep(0.01)
                node.request_stop()
                with trio.fail_after(5):  # the service returns, so the node closes the link
                    while not link.closed:
                        await trio.sleep(0.01)
            # node.run returns by itself after the stop, which ends the nursery
        assert node.metrics.htx_sessions._value.get() == 0  # type: ignore[attr-defined]

    trio.run(main)
    assert len(seen) == 1 and len(seen[0]) == 32


def test_roles_start_in_order_with_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qnet.dir.descriptor import Role

    events: list[str] = []

    class Slow:
        name = "relay"

        async def run(self, node: app.Node, *, task_status: trio.TaskStatus[None]) -> None:
            await trio.sleep(0.05)
            events.append("relay ready")
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                events.append("relay stopped")

    monkeypatch.setitem(app.ROLE_SERVICES, Role.RELAY, lambda node: Slow())
    node = _in_process_node(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(node.run)
            events.append(f"listening {ports.tcp > 0}")
            node.request_stop()

    trio.run(main)
    assert events == ["relay ready", "listening True", "relay stopped"]


def test_metrics_endpoint_in_process() -> None:
    a, b = NodeMetrics(clock=lambda: 1000.0), NodeMetrics()
    a.cells_forwarded.inc(3)
    a.drop("bad_mac")
    a.set_consensus(990.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, a, "127.0.0.1", 0)
            status, body = await trio.to_thread.run_sync(_http_get, port)
            assert status == 200
            assert "qnet_cells_forwarded_total 3.0" in body
            assert 'qnet_drops_total{reason="bad_mac"} 1.0' in body
            assert "qnet_consensus_age_seconds 10.0" in body
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Separate registries: the second node saw nothing.
    assert b"qnet_cells_forwarded_total 0.0" in b.render()


def test_logs_scrub_addresses() -> None:
    import io
    import json
    import logging

    from qnet.node.logging import configure_logging, log_event, safe_addr

    out = io.StringIO()
    log = logging.getLogger("qnet.node.test")
    configure_logging("debug", "json", stream=out)
    log_event(log, logging.INFO, "link_open", peer=safe_addr(("192.0.2.1", 443)), n=2)
    configure_logging("debug", "text", log_addresses=True, stream=out)
    log_event(log, logging.INFO, "link_open", peer=safe_addr(("2001:db8::1", 443)))
    first, second = out.getvalue().splitlines()
    record = json.loads(first)
    assert record["event"] == "link_open" and record["peer"] == "[scrubbed]" and record["n"] == 2
    assert "192.0.2.1" not in first
    assert second.endswith("link_open peer=[2001:db8::1]:443")
    # Leave the "qnet" logger as other tests expect it.
    root = logging.getLogger("qnet")
    for handler in [h for h in root.handlers if h.get_name() == "qnet-node"]:
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)
