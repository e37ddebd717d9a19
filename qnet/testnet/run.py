"""Start, watch, check and stop a test network of real ``qnet`` processes.

``start`` launches every node (``qnet node --config``), the local web server and
the SOCKS proxy as separate processes (each in its own session, logging to its
directory), records their pids in ``testnet.json`` and waits until the proxy
can carry a stream end to end. ``stop`` ends them with SIGTERM (SIGKILL after a
grace period).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qnet.testnet.plan import HOST, NetworkPlan

STATE = "testnet.json"
STOP_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Proc:
    name: str
    pid: int
    log: str


def _spawn(name: str, argv: list[str], cwd: Path) -> Proc:
    log = cwd / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name, proc.pid, str(log))


def _qnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "qnet.cli", *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def load_state(directory: Path) -> list[Proc]:
    path = directory / STATE
    if not path.exists():
        return []
    return [Proc(**p) for p in json.loads(path.read_text())["processes"]]


def _save_state(directory: Path, procs: list[Proc]) -> None:
    data = {"processes": [_asdict(p) for p in procs]}
    (directory / STATE).write_text(json.dumps(data, indent=1))


def _asdict(p: Proc) -> dict[str, object]:
    return {"name": p.name, "pid": p.pid, "log": p.log}


def _wait_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return True
        time.sleep(0.1)
    return False


def _check_free(ports: list[int]) -> None:
    """Refuse to start on ports something else already listens on (it would be used instead)."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError as exc:
                raise RuntimeError(f"port {port} is already in use ({exc.strerror})") from None


def start(plan: NetworkPlan, *, timeout: float = 120.0, say: object = print) -> list[Proc]:
    """Launch everything in ``plan``; return once a fetch through the proxy works.

    Raises ``RuntimeError`` (naming the process and its log) if something does
    not come up in ``timeout`` seconds; what was started is stopped again.
    """
    root = Path(plan.directory)
    if any(_alive(p.pid) for p in load_state(root)):
        raise RuntimeError(f"a test network is already running in {root}; stop it first")
    _check_free([n.port for n in plan.nodes] + [plan.web_port, plan.socks_port])
    procs: list[Proc] = []
    deadline = time.monotonic() + timeout
    try:
        procs.append(
            _spawn(
                "web", [sys.executable, "-m", "qnet.testnet.web", str(plan.web_port)], root / "web"
            )
        )
        for node in plan.nodes:
            procs.append(
                _spawn(node.name, _qnet("node", "--config", node.config), Path(node.config).parent)
            )
        _save_state(root, procs)
        for node in plan.nodes:
            if not _wait_port(node.port, deadline):
                raise RuntimeError(
                    f"{node.name} did not listen on {node.port}; see {root / node.name}"
                )
        if not _wait_port(plan.web_port, deadline):
            raise RuntimeError("the web server did not start; see web/web.log")
        _say(say, f"qnet testnet: {len(plan.nodes)} nodes up; waiting for the first consensus")
        client_dir = root / "client"
        procs.append(
            _spawn("proxy", _qnet("proxy", "--config", str(client_dir / "client.toml")), client_dir)
        )
        _save_state(root, procs)
        if not _wait_port(plan.socks_port, deadline):
            raise RuntimeError(
                f"the SOCKS proxy did not listen on {plan.socks_port}; see client/proxy.log"
            )
        while True:
            try:
                verify(plan, size=1024, timeout=max(1.0, min(30.0, deadline - time.monotonic())))
                break
            except (OSError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no stream got through the network in time: {exc}") from exc
                time.sleep(1.0)
    except BaseException:
        stop(root)
        raise
    return procs


def _say(say: object, text: str) -> None:
    if callable(say):
        say(text)


def stop(directory: Path, grace: float = STOP_GRACE) -> int:
    """SIGTERM every recorded process, SIGKILL what is left after ``grace``; the count."""
    procs = load_state(directory)
    for p in procs:
        if _alive(p.pid):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p.pid) for p in procs):
        time.sleep(0.1)
    for p in procs:
        if _alive(p.pid):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (directory / STATE).unlink(missing_ok=True)
    return len(procs)


def status(directory: Path) -> list[tuple[str, int, bool]]:
    """(name, pid, alive) for every recorded process."""
    return [(p.name, p.pid, _alive(p.pid)) for p in load_state(directory)]


# --- a fetch through the proxy (a minimal SOCKS5 client, on purpose independent) ---------


def _socks_connect(port: int, host: str, dest_port: int, timeout: float) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        s.close()
        raise RuntimeError("the SOCKS proxy refused the no-auth method")
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + dest_port.to_bytes(2, "big"))
    head = _recv_exact(s, 4)
    if head[1] != 0:
        s.close()
        raise RuntimeError(f"the SOCKS proxy answered with reply code {head[1]}")
    skip = {1: 4, 4: 16}.get(head[3])
    _recv_exact(s, (skip if skip is not None else _recv_exact(s, 1)[0]) + 2)
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = s.recv(n - len(out))
        if not data:
            raise RuntimeError("the connection closed early")
        out += data
    return bytes(out)


def _http_get(s: socket.socket, path: str) -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    data = bytearray()
    while chunk := s.recv(1 << 16):
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:60]!r}")
    return body


def verify(plan: NetworkPlan, *, size: int = 1 << 20, timeout: float = 60.0) -> float:
    """Fetch ``size`` bytes from the web server through the proxy and check them.

    Returns the seconds the fetch took; raises ``RuntimeError`` on a mismatch.
    """
    with socket.create_connection((HOST, plan.web_port), timeout=timeout) as direct:
        want = _http_get(direct, f"/sha256/{size}").strip().decode()
    t0 = time.monotonic()
    with _socks_connect(plan.socks_port, HOST, plan.web_port, timeout) as s:
        body = _http_get(s, f"/bytes/{size}")
    took = time.monotonic() - t0
    if len(body) != size or hashlib.sha256(body).hexdigest() != want:
        raise RuntimeError(f"fetched {len(body)} bytes through the proxy; the checksum differs")
    return took
