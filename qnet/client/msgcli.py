"""``qnet receive`` and ``qnet send``: anonymous messages through the mixnet.

    qnet receive --config client.toml [--count N] [--reply TEXT]
        prints this client's address (qm1…), then each message as it arrives;
        with --reply, answers each one on the SURB it came with
    qnet send --config client.toml --to qm1… TEXT [--wait SECONDS]
        sends TEXT and prints the reply if one comes within --wait seconds

The receiving identity (session secret, X25519 key, gateway) is kept in the
client's data directory (``messaging.json``, mode 0600), so the address stays
the same across runs while its gateway stays in the consensus.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import trio

from qnet.client.app import Client
from qnet.client.messaging import Messenger, MixAddress
from qnet.client.mixed import MixClient
from qnet.crypto.primitives import X25519Key, random_bytes
from qnet.node.config import ConfigError, load_client_config

IDENTITY_FILE = "messaging.json"
#: Seconds ``receive --count`` stays up after its last reply so the reply gets out.
REPLY_GRACE = 3.0


def _identity(data_dir: Path, gateways: list[bytes]) -> tuple[bytes, X25519Key, bytes]:
    """(session secret, key, gateway), created once and reused while the gateway lives."""
    path = data_dir / IDENTITY_FILE
    if path.exists():
        raw = json.loads(path.read_text())
        gateway = bytes.fromhex(raw["gateway"])
        if gateway in gateways:
            return bytes.fromhex(raw["secret"]), X25519Key(bytes.fromhex(raw["key"])), gateway
    secret, key = random_bytes(32), X25519Key.generate()
    gateway = random.SystemRandom().choice(gateways)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(
            {"secret": secret.hex(), "key": key.private_bytes.hex(), "gateway": gateway.hex()}, out
        )
    os.replace(tmp, path)
    return secret, key, gateway


async def _session(
    config_path: str, *, persistent: bool, task_status: trio.TaskStatus[Messenger]
) -> None:
    config = load_client_config(config_path)
    client = Client(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.follow_consensus)
        topology = client.topology
        assert topology is not None
        gateways = [node_id for node_id, _ in topology.gateways()]
        if not gateways:
            raise SystemExit("qnet: the network has no mixnodes")
        if persistent:
            secret, key, gateway = _identity(config.proxy.data_dir, gateways)
        else:
            secret, key, gateway = random_bytes(32), X25519Key.generate(), random.choice(gateways)
        session = MixClient(topology, gateway, secret=secret)
        messenger = Messenger(session, key)
        await nursery.start(session.run)
        task_status.started(messenger)


def receive_main(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with trio.open_nursery() as nursery:
            messenger: Messenger = await nursery.start(
                lambda task_status: _session(args.config, persistent=True, task_status=task_status)
            )
            print(f"address: {messenger.address}", flush=True)
            for _ in range(args.count) if args.count else iter(int, 1):
                msg = await messenger.receive()
                print(f"message: {msg.text.decode('utf-8', 'replace')}", flush=True)
                if args.reply is not None and msg.surb is not None:
                    await messenger.reply(msg, args.reply.encode())
            # Replies leave on the cover stream's next payload ticks: let them go.
            await trio.sleep(REPLY_GRACE)
            nursery.cancel_scope.cancel()

    return _run(run)


def send_main(args: argparse.Namespace) -> int:
    try:
        to = MixAddress.parse(args.to)
    except ValueError as exc:
        print(f"qnet send: bad address: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            messenger: Messenger = await nursery.start(
                lambda task_status: _session(args.config, persistent=False, task_status=task_status)
            )
            await messenger.send(to, args.text.encode(), want_reply=args.wait > 0)
            print("sent", flush=True)
            if args.wait > 0:
                with trio.move_on_after(args.wait):
                    _, reply = await messenger.receive_reply()
                    print(f"reply: {reply.decode('utf-8', 'replace')}", flush=True)
            nursery.cancel_scope.cancel()

    return _run(run)


def _run(fn: object) -> int:
    try:
        trio.run(fn)  # type: ignore[arg-type]
    except ConfigError as exc:
        print(f"qnet: bad config: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def add_arguments(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    recv = sub.add_parser("receive", help="print this client's address and its messages")
    recv.add_argument("--config", required=True, metavar="PATH")
    recv.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    recv.add_argument("--reply", default=None, help="answer each message with this text")
    send = sub.add_parser("send", help="send an anonymous message")
    send.add_argument("--config", required=True, metavar="PATH")
    send.add_argument("--to", required=True, help="the recipient's address (qm1…)")
    send.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a reply")
    send.add_argument("text")
