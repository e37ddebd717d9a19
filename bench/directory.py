"""Build and verify a consensus of N nodes; compare with SHA-256 over the same bytes.

    .venv/bin/python bench/directory.py            # readable table
    .venv/bin/python bench/directory.py --json     # one JSON object on stdout
    .venv/bin/python bench/directory.py --nodes 1000 10000 --repeats 3

Three authorities vote on the same N synthetic nodes (random keys; every
authority measures a different bandwidth and one of them sees a tenth of the
nodes as down, so medians and flag majorities do real work). Per size it times:

* ``compute``: ``compute_consensus`` over the three parsed votes;
* ``encode``: the deterministic CBOR of the body;
* ``sign``: one authority's two signatures over the body;
* ``build``: compute + encode + three signatures + ``assemble`` — what the
  authorities do together, run in one process;
* ``verify``: ``verify_consensus`` of the document (decode, field checks, three
  Ed25519 and three ML-DSA-65 verifications) — what every client does;
* ``sha256``: ``hashlib.sha256`` of the same document bytes, in the same process,
  the baseline the ratios divide by.

Each figure is the median of ``--repeats`` runs. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from qnet.dir.consensus import assemble, compute_consensus, sign_body, verify_consensus  # noqa: E402
from qnet.dir.descriptor import Address, Descriptor, Role, Transport  # noqa: E402
from qnet.dir.flags import DAY, Observation  # noqa: E402
from qnet.dir.identity import Identity  # noqa: E402
from qnet.dir.vote import Authorities, DirectoryParams, build_vote  # noqa: E402

PARAMS = DirectoryParams()
EPOCH = 500_000
VA = PARAMS.times(EPOCH)[0]
NOW = VA - 300


def _descriptors(n: int) -> list[Descriptor]:
    rnd = os.urandom
    roles = ((Role.RELAY,), (Role.MIX,), (Role.EXIT, Role.RELAY))
    out = []
    for i in range(n):
        ip = ipaddress.IPv4Address(0x0A000000 + i)
        out.append(
            Descriptor(
                node_id=rnd(32),
                published=VA - 1200,
                addresses=(Address(transport=Transport.TCP, ip=ip, port=443),),
                roles=roles[i % 3],
                exit_policy=(),
                bandwidth=1_000_000 + i,
                software="qnet/0.1.0",
                server_name=f"n{i}.example.net",
                family=(),
                id_ed25519=rnd(32),
                id_mldsa65=rnd(1952),
                link_x25519=rnd(32),
                kem_mlkem768=rnd(1184),
                ticket_x25519=rnd(32),
                ticket_key_id=1,
                mix_epoch=EPOCH,
                mix_current=rnd(32),
                mix_next=rnd(32),
            )
        )
    return out


def _votes(n: int, auths: list[Identity]) -> list[Any]:
    descs = _descriptors(n)
    votes = []
    for a, ident in enumerate(auths):
        obs = [
            Observation(
                descriptor=d,
                first_seen=NOW - 30 * DAY,
                last_reachable=NOW - (7200 if (i + a) % 10 == 0 else 60),
                running_since=NOW - (i % 20) * DAY,
                measured_bandwidth=(i * 7919 + a * 104_729) % 10_000_000,
            )
            for i, d in enumerate(descs)
        ]
        votes.append(build_vote(ident, EPOCH, obs, NOW, PARAMS))
    return votes


def _time(fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def measure(n: int, repeats: int) -> dict[str, Any]:
    auths = [Identity(bytes([i]) * 32, bytes([i + 9]) * 32) for i in range(1, 4)]
    known = Authorities.of(a.public for a in auths)
    print(f"[{n} nodes] building votes", file=sys.stderr)
    votes = _votes(n, auths)
    cons = compute_consensus(votes, known, NOW, PARAMS)
    body = cons.encode()
    doc = assemble(body, [sign_body(body, a) for a in auths])

    def build() -> bytes:
        b = compute_consensus(votes, known, NOW, PARAMS).encode()
        return assemble(b, [sign_body(b, a) for a in auths])

    assert compute_consensus(votes[::-1], known, NOW, PARAMS).encode() == body
    print(f"[{n} nodes] timing", file=sys.stderr)
    t: dict[str, float] = {
        "compute": _time(lambda: compute_consensus(votes, known, NOW, PARAMS), repeats),
        "encode": _time(cons.encode, repeats),
        "sign": _time(lambda: sign_body(body, auths[0]), repeats),
        "build": _time(build, repeats),
        "verify": _time(lambda: verify_consensus(doc, known, VA), repeats),
        "sha256": _time(lambda: hashlib.sha256(doc).digest(), max(repeats, 5)),
    }
    return {
        "nodes": n,
        "consensus_nodes": len(cons.nodes),
        "body_bytes": len(body),
        "document_bytes": len(doc),
        "bytes_per_node": round(len(body) / max(1, len(cons.nodes)), 1),
        "seconds": {k: round(v, 6) for k, v in t.items()},
        "ratio_to_sha256": {
            "build": round(t["build"] / t["sha256"], 1),
            "verify": round(t["verify"] / t["sha256"], 1),
        },
        "verify_mb_per_s": round(len(doc) / t["verify"] / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    results = [measure(n, args.repeats) for n in args.nodes]
    report = {
        "bench": "directory",
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "repeats": args.repeats,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(
        f"{'nodes':>7} {'size':>12} {'build s':>9} {'verify s':>9} {'sha256 s':>9} "
        f"{'build/sha':>9} {'verify/sha':>10}"
    )
    for r in results:
        s = r["seconds"]
        print(
            f"{r['nodes']:>7} {r['document_bytes']:>12,} {s['build']:>9.3f} {s['verify']:>9.3f} "
            f"{s['sha256']:>9.5f} {r['ratio_to_sha256']['build']:>9.1f} "
            f"{r['ratio_to_sha256']['verify']:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
