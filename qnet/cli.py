"""The ``qnet`` command.

    qnet version      print the version and which hot path is in use
    qnet selftest     run the spec vectors on every backend, then carry a message
                      through a 3-hop Sphinx path and a 3-hop cell onion, in process
    qnet node --config node.toml
                      run a node (roles, keys and ports from the config; see
                      docs/node.example.toml); SIGINT/SIGTERM stop it gracefully

The SOCKS proxy and ``qnet testnet`` arrive with their issues.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from qnet import __version__
from qnet.crypto import accel


def _version() -> int:
    print(f"qnet {__version__} (hot path: {accel.BACKEND_NAME})")
    return 0


def _demo_sphinx() -> None:
    from qnet.mix import sphinx as S

    keys = [S.MixKey.generate() for _ in range(3)]
    ids = [os.urandom(32) for _ in range(3)]
    route = S.mix_route(
        list(zip(ids, (k.public_bytes for k in keys), strict=True)),
        S.Slot(command=S.Command.DELIVER, tag=b"selftest-message"),
        [5000, 7000, 0],
    )
    built = S.build_packet(route, b"hello through three mixes")
    packet = built.packet
    seen: list[set[bytes]] = [set(), set(), set()]
    for i, key in enumerate(keys):
        t0 = time.perf_counter()
        result = S.process(packet, key, seen[i])
        dt = (time.perf_counter() - t0) * 1e6
        if isinstance(result, S.Relay):
            print(
                f"  mix {i}: relay to {result.next_hop.hex()[:12]}… "
                f"after {result.delay_us} µs ({dt:.0f} µs)"
            )
            packet = result.packet
        elif isinstance(result, S.Deliver):
            print(f"  mix {i}: deliver {result.message.rstrip(bytes(1))!r} ({dt:.0f} µs)")
        else:
            raise SystemExit(f"selftest: unexpected {result}")
    again = S.process(built.packet, keys[0], seen[0])
    print(f"  replay of the first packet at mix 0: {again}")


def _demo_cells() -> None:
    from qnet.routing import cells as R

    keys = [R.derive_layer_keys(os.urandom(32)) for _ in range(3)]
    onion = R.ClientOnion(keys)
    cell = R.RelayCell(command=R.RelayCommand.DATA, stream_id=1, data=b"GET / HTTP/1.1\r\n\r\n")
    body = onion.seal_forward(cell.encode())
    for i in range(2):
        body = R.PassLayer(keys[i].forward).apply(body)
    got = R.decode_relay_cell(R.EndLayer(keys[2].forward).open(body))
    print(
        f"  cell through entry, middle, exit: {got.command.name} "
        f"stream {got.stream_id} {got.data!r}"
    )


def _selftest() -> int:
    from qnet.lint.cli import run_vectors
    from qnet.lint.vectors import DEFAULT_DIR

    print(
        f"qnet {__version__} selftest — hot path: {accel.BACKEND_NAME}; backends built: "
        f"{', '.join(sorted(accel.available()))}"
    )
    bad = run_vectors(DEFAULT_DIR, sorted(accel.available()))
    print("Sphinx, 3 hops:")
    _demo_sphinx()
    print("Relay cells, 3 hops:")
    _demo_cells()
    print("selftest: " + ("FAILED" if bad else "all vectors agree"))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qnet", description="QNet anonymity network")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version", help="print the version and hot path")
    sub.add_parser("selftest", help="run vectors and an in-process packet demo")
    node = sub.add_parser("node", help="run a node (relay, exit, mix, authority)")
    node.add_argument("--config", required=True, metavar="PATH", help="the node's TOML config")
    proxy = sub.add_parser("proxy", help="run the SOCKS proxy (a client)")
    proxy.add_argument("--config", required=True, metavar="PATH", help="the client's TOML config")
    from qnet.client.msgcli import add_arguments as add_messaging

    add_messaging(sub)
    testnet = sub.add_parser("testnet", help="a whole test network on this machine")
    from qnet.testnet.cli import add_arguments

    add_arguments(testnet)
    args = ap.parse_args(argv)
    if args.cmd == "version":
        return _version()
    if args.cmd == "node":
        from qnet.node.app import main as node_main

        return node_main(args.config)
    if args.cmd == "proxy":
        from qnet.client.app import main as proxy_main

        return proxy_main(args.config)
    if args.cmd in ("send", "receive"):
        from qnet.client.msgcli import receive_main, send_main

        return send_main(args) if args.cmd == "send" else receive_main(args)
    if args.cmd == "testnet":
        from qnet.testnet.cli import main as testnet_main

        return testnet_main(args)
    return _selftest()


if __name__ == "__main__":
    sys.exit(main())
