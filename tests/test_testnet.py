"""End to end: a whole test network of real processes, used through its SOCKS proxy.

One network (3 authorities, 3 relays, 2 exits, 6 mixnodes, a web server, the proxy) is started
for the module with ``qnet testnet start`` and stopped at the end.
"""

from __future__ import annotations

import functools
import hashlib
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from qnet.dir.client import fetch_consensus
from qnet.dir.descriptor import server_name_problem
from qnet.dir.vote import Authorities
from qnet.node.config import load_client_config, load_config
from qnet.testnet.plan import Layout, NetworkPlan, lay_out
from qnet.testnet.run import _check_free, _http_get, _socks_connect, start, stop


def free_base(count: int) -> int:
    """A base port with ``count`` free ports after it (others may run networks too)."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 60000 - count)
        try:
            _check_free(list(range(base, base + count)))
        except RuntimeError:
            continue
        return base
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    directory = tmp_path_factory.mktemp("testnet")
    base = free_base(18)
    layout = Layout(directory=directory, base_port=base, socks_port=base + 17, mixes=6)
    plan = lay_out(layout)
    try:
        start(plan, timeout=150)
        yield plan
    finally:
        stop(Path(plan.directory))


def fetch(
    plan: NetworkPlan, path: str, *, user: str | None = None, port: int | None = None
) -> bytes:
    """GET ``path`` from the web server through the proxy (SOCKS5, optional user/pass)."""
    if user is None:
        s = _socks_connect(plan.socks_port, "127.0.0.1", port or plan.web_port, 60)
    else:
        s = _socks5_auth(plan.socks_port, user, port or plan.web_port)
    with s:
        return _http_get(s, path)


def _socks5_auth(proxy_port: int, user: str, port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=60)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    u = user.encode()
    s.sendall(b"\x01" + bytes([len(u)]) + u + b"\x01x")
    assert s.recv(2) == b"\x01\x00"
    host = b"127.0.0.1"
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big"))
    head = s.recv(10)
    assert head[1] == 0, head
    return s


def socks_reply_code(plan: NetworkPlan, port: int) -> int:
    s = socket.create_connection(("127.0.0.1", plan.socks_port), timeout=60)
    with s:
        s.sendall(b"\x05\x01\x00")
        s.recv(2)
        host = b"127.0.0.1"
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big"))
        return s.recv(10)[1]


def test_every_node_is_listed_under_its_own_server_name(net: NetworkPlan) -> None:
    """Each node has its own plausible TLS name (not "localhost"), publishes it in its
    descriptor, and the consensus the proxy follows carries it (spec/directory.md §5)."""
    names = {n.name: n.server_name for n in net.nodes}
    assert len(set(names.values())) == len(names)
    assert all(server_name_problem(v) is None and "." in v for v in names.values())
    for n in net.nodes:
        assert load_config(n.config).htx.server_name == n.server_name
    client = load_client_config(Path(net.directory) / "client" / "client.toml")
    entries = client.directory.authorities
    assert [e.server_name for e in entries] == [names[f"auth{i + 1}"] for i in range(len(entries))]
    got = trio.run(
        functools.partial(
            fetch_consensus,
            [e.peer() for e in entries],
            Authorities.of(e.identity for e in entries),
            int(time.time()),
        )
    )
    published = [e.descriptor.server_name for e in got.consensus.nodes]
    publishing = {v for k, v in names.items() if not k.startswith("auth")}
    assert len(published) >= 3 and len(set(published)) == len(published)
    assert set(published) <= publishing


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_downloads_100_mib_with_the_right_checksum(net: NetworkPlan) -> None:
    size = 100 * 2**20
    url = f"http://127.0.0.1:{net.web_port}"
    curl = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "240",
            "--socks5-hostname",
            f"127.0.0.1:{net.socks_port}",
            f"{url}/bytes/{size}",
        ],
        capture_output=True,
        check=True,
    )
    want = fetch(net, f"/sha256/{size}").strip().decode()
    assert len(curl.stdout) == size
    assert hashlib.sha256(curl.stdout).hexdigest() == want


def test_100_parallel_downloads(net: NetworkPlan) -> None:
    want = fetch(net, "/sha256/200000").strip().decode()
    results: list[bool] = []

    def one() -> None:
        body = fetch(net, "/bytes/200000")
        results.append(hashlib.sha256(body).hexdigest() == want)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [True] * 100


def test_200_concurrent_streams_on_a_few_circuits(net: NetworkPlan) -> None:
    # Four SOCKS usernames: four circuits, fifty streams each, all at once.
    want = fetch(net, "/sha256/50000").strip().decode()
    results: list[bool] = []

    def one(i: int) -> None:
        body = fetch(net, "/bytes/50000", user=f"crowd{i % 4}")
        results.append(hashlib.sha256(body).hexdigest() == want)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [True] * 200


def test_a_python_socks_client_library(net: NetworkPlan) -> None:
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(f"socks5://127.0.0.1:{net.socks_port}", rdns=True)
    s = proxy.connect(dest_host="127.0.0.1", dest_port=net.web_port, timeout=60)
    with s:
        body = _http_get(s, "/")
    assert b"test network" in body


def test_isolation_by_username_uses_different_exits(net: NetworkPlan) -> None:
    # Each username gets its own circuit; a new one avoids the exits other usernames
    # hold while another exit is free (with two exits, both must show up).
    seen = {fetch(net, "/whoami", user=f"user{i}").strip() for i in range(12)}
    assert len(seen) == 2, seen
    assert all(addr.startswith(b"127.0.0.1") and addr != b"127.0.0.1" for addr in seen)
    # The same username keeps its circuit (and so its exit).
    again = {fetch(net, "/whoami", user="user0").strip() for _ in range(3)}
    assert len(again) == 1


def test_exit_refusals_map_to_socks_reply_codes(net: NetworkPlan) -> None:
    assert socks_reply_code(net, 25) == 0x02  # refused by the exit policy
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert socks_reply_code(net, port) == 0x05  # connection refused at the destination
    assert fetch(net, "/").startswith(b"<!doctype html>")  # and the next request works


def test_a_killed_relay_is_routed_around(net: NetworkPlan) -> None:
    import json
    import os
    import signal

    state = json.loads((Path(net.directory) / "testnet.json").read_text())
    victim = next(p for p in state["processes"] if p["name"] == "relay1")
    os.killpg(victim["pid"], signal.SIGKILL)
    for i in range(6):
        assert fetch(net, "/", user=f"after-kill-{i}").startswith(b"<!doctype html>")


def test_testnet_cli_status_and_verify(net: NetworkPlan) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "qnet.cli",
            "testnet",
            "verify",
            "--dir",
            net.directory,
            "--bytes",
            "3000000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "checksum ok" in out.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_mixed_mode_curl_fetch_of_one_mebibyte(net: NetworkPlan) -> None:
    # A SOCKS username starting with "mix" sends the stream through the mixnet.
    size = 1 << 20
    curl = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "120",
            "--socks5-hostname",
            f"127.0.0.1:{net.socks_port}",
            "--proxy-user",
            "mix-user:x",
            f"http://127.0.0.1:{net.web_port}/bytes/{size}",
        ],
        capture_output=True,
        check=True,
    )
    want = fetch(net, f"/sha256/{size}").strip().decode()
    assert hashlib.sha256(curl.stdout).hexdigest() == want


def test_send_and_receive_a_message_with_a_reply(net: NetworkPlan, tmp_path: Path) -> None:
    client_dir = Path(net.directory) / "client"
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qnet.cli",
            "receive",
            "--config",
            str(client_dir / "client.toml"),
            "--count",
            "1",
            "--reply",
            "hello back",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        address = receiver.stdout.readline().split()[-1]
        assert address.startswith("qm1")
        config = (client_dir / "client.toml").read_text()
        config = config.replace('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
        config = config.replace(
            "../authorities.toml", str(Path(net.directory) / "authorities.toml")
        )
        config = config.replace(f"port = {net.socks_port}", "port = 0")
        (tmp_path / "sender.toml").write_text(config)
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "qnet.cli",
                "send",
                "--config",
                str(tmp_path / "sender.toml"),
                "--to",
                address,
                "--wait",
                "30",
                "hi through the mixnet",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert "reply: hello back" in sent.stdout, sent.stdout + sent.stderr
        out, _ = receiver.communicate(timeout=30)
        assert "message: hi through the mixnet" in out
    finally:
        receiver.kill()
