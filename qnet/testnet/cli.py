"""``qnet testnet``: start, inspect, check and stop a local test network.

qnet testnet                       start, wait until usable, print how to use it,
                                   stop everything on Ctrl-C
qnet testnet start [--dir D] [--authorities N --relays N --exits N --mixes N]
qnet testnet status [--dir D]
qnet testnet verify [--dir D] [--bytes N]
qnet testnet stop [--dir D]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from qnet.testnet.plan import HOST, Layout, NetworkPlan, lay_out
from qnet.testnet.run import start, status, stop, verify

DEFAULT_DIR = Path("testnet")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "action", nargs="?", default="run", choices=["run", "start", "status", "verify", "stop"]
    )
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the network lives")
    ap.add_argument("--authorities", type=int, default=3)
    ap.add_argument("--relays", type=int, default=3)
    ap.add_argument("--exits", type=int, default=2)
    ap.add_argument("--mixes", type=int, default=0)
    ap.add_argument("--base-port", type=int, default=7100)
    ap.add_argument("--socks-port", type=int, default=1080)
    ap.add_argument("--epoch-seconds", type=int, default=10)
    ap.add_argument("--bytes", type=int, default=1 << 20, help="verify: bytes to fetch")
    ap.add_argument("--timeout", type=float, default=180.0, help="start: seconds to wait")


def _usage(plan: NetworkPlan) -> str:
    url = f"http://{HOST}:{plan.web_port}/"
    return (
        f"qnet testnet is ready in {plan.directory}: {len(plan.nodes)} nodes, "
        f"SOCKS proxy on {HOST}:{plan.socks_port}.\n"
        f"  curl --socks5-hostname {HOST}:{plan.socks_port} {url}\n"
        f"  curl --socks5-hostname {HOST}:{plan.socks_port} {url}bytes/1048576 | sha256sum\n"
        f"  curl -s {url}sha256/1048576            # what that checksum must be\n"
        f"Logs: {plan.directory}/<node>/<node>.log"
    )


def main(args: argparse.Namespace) -> int:
    if args.action == "stop":
        n = stop(args.dir)
        print(f"qnet testnet: stopped {n} processes")
        return 0
    if args.action == "status":
        rows = status(args.dir)
        if not rows:
            print("qnet testnet: nothing running")
            return 1
        for name, pid, alive in rows:
            print(f"{name:<8} pid {pid:<8} {'running' if alive else 'GONE'}")
        return 0 if all(alive for _, _, alive in rows) else 1
    if args.action == "verify":
        plan = NetworkPlan.load(args.dir)
        took = verify(plan, size=args.bytes)
        print(
            f"qnet testnet: fetched {args.bytes} bytes through the network in {took:.2f} s;"
            " checksum ok"
        )
        return 0
    layout = Layout(
        directory=args.dir,
        authorities=args.authorities,
        relays=args.relays,
        exits=args.exits,
        mixes=args.mixes,
        base_port=args.base_port,
        socks_port=args.socks_port,
        epoch_seconds=args.epoch_seconds,
    )
    plan = lay_out(layout)
    print(f"qnet testnet: starting {len(plan.nodes)} nodes in {plan.directory}", flush=True)
    t0 = time.monotonic()
    start(plan, timeout=args.timeout, say=lambda s: print(s, flush=True))
    print(f"qnet testnet: usable after {time.monotonic() - t0:.1f} s", flush=True)
    print(_usage(plan), flush=True)
    if args.action == "start":
        return 0
    print("Press Ctrl-C to stop the network.", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stop(args.dir)
        print("qnet testnet: stopped", flush=True)
    return 0
