"""The measurable rules by which one authority assigns flags (spec/directory.md §8.3).

Pure functions over what an authority observed about each node: its verified
descriptor, when the authority first and last reached it, how long it has been
reachable without a break, and the bandwidth the authority measured. No clock,
no network: ``now`` is an argument. Every number is a field of ``FlagRules``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from qnet.dir.descriptor import Descriptor, Role

DAY: Final = 86_400


class Flag(enum.StrEnum):
    """Flags an authority votes for and the consensus carries (lower-case on the wire)."""

    EXIT = "exit"
    FAST = "fast"
    GUARD = "guard"
    MIX = "mix"
    RUNNING = "running"
    STABLE = "stable"
    VALID = "valid"


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagRules:
    """The thresholds of §8.3. Defaults are the production values; tests shrink the times.

    * ``running_max_age``: Running needs a successful reachability test this recent (s).
    * ``stable_min_uptime``: Stable needs this long reachable without a break (s).
    * ``guard_min_known``: Guard needs the node known to this authority this long (s).
    * ``fast_permille`` / ``fast_guarantee``: Fast needs a measured bandwidth at least the
      ``fast_permille``-th per-mille of the Running nodes' bandwidths, or at least
      ``fast_guarantee`` bytes/s, whichever is lower (and more than 0).
    * ``guard_permille`` / ``guard_guarantee``: the same for Guard.
    * ``exit_ports`` / ``exit_probes``: Exit needs the policy to accept every port in
      ``exit_ports`` towards every address in ``exit_probes``.
    """

    running_max_age: int = 45 * 60
    stable_min_uptime: int = 5 * DAY
    guard_min_known: int = 8 * DAY
    fast_permille: int = 125
    fast_guarantee: int = 100_000
    guard_permille: int = 500
    guard_guarantee: int = 2_000_000
    exit_ports: tuple[int, ...] = (80, 443)
    exit_probes: tuple[str, ...] = ("1.1.1.1", "8.8.8.8")
    _probe_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in (
            "running_max_age",
            "stable_min_uptime",
            "guard_min_known",
            "fast_guarantee",
            "guard_guarantee",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"FlagRules.{name} must be a non-negative int")
        for name in ("fast_permille", "guard_permille"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
                raise ValueError(f"FlagRules.{name} must be an int in 0..1000")
        if not self.exit_ports or not all(1 <= p <= 65535 for p in self.exit_ports):
            raise ValueError("FlagRules.exit_ports must be ports in 1..65535")
        try:
            ips = tuple(ipaddress.ip_address(a) for a in self.exit_probes)
        except ValueError:
            raise ValueError("FlagRules.exit_probes must be IP addresses") from None
        if not ips:
            raise ValueError("FlagRules.exit_probes must not be empty")
        object.__setattr__(self, "_probe_ips", ips)


DEFAULT_RULES: Final = FlagRules()


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What one authority knows about one node whose descriptor it accepted (and verified).

    ``first_seen``: when the authority first reached the node (Unix s).
    ``last_reachable``: the last successful reachability test, or ``None``.
    ``running_since``: start of the current unbroken run of successful tests, or ``None``.
    ``measured_bandwidth``: bytes/s measured by this authority (0 = not measured).
    ``rejected``: the operator of this authority marked the node bad (not Valid).
    """

    descriptor: Descriptor
    first_seen: int
    last_reachable: int | None
    running_since: int | None
    measured_bandwidth: int
    rejected: bool = False


def low_median(values: Iterable[int]) -> int:
    """The low median: element ``(n - 1) // 2`` of the sorted values. Raises on empty input."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of nothing")
    return ordered[(len(ordered) - 1) // 2]


def permille(values: Iterable[int], p: int) -> int:
    """Element ``p * (n - 1) // 1000`` of the sorted values (0 for an empty input)."""
    ordered = sorted(values)
    if not ordered:
        return 0
    return ordered[p * (len(ordered) - 1) // 1000]


def is_running(obs: Observation, now: int, rules: FlagRules) -> bool:
    return obs.last_reachable is not None and 0 <= now - obs.last_reachable <= rules.running_max_age


def is_exit(desc: Descriptor, rules: FlagRules) -> bool:
    """The exit role and a policy that accepts every ``exit_ports`` port to every probe."""
    return all(desc.allows_exit(ip, port) for ip in rules._probe_ips for port in rules.exit_ports)


def assign_flags(
    observations: Iterable[Observation], now: int, epoch: int, rules: FlagRules = DEFAULT_RULES
) -> dict[bytes, frozenset[Flag]]:
    """Each node's flags from this authority's observations (node id → flags).

    Running and Valid come first; the bandwidth thresholds for Fast and Guard are
    taken over the measured bandwidths of the nodes that are Running and Valid.
    Stable, Fast, Guard and Mix also need Running; Exit depends on the policy only.
    Mix needs the ``mix`` role and mix keys published for ``epoch``.
    """
    obs = list(observations)
    running = {o.descriptor.node_id for o in obs if is_running(o, now, rules) and not o.rejected}
    bws = [o.measured_bandwidth for o in obs if o.descriptor.node_id in running]
    fast_floor = max(1, min(permille(bws, rules.fast_permille), rules.fast_guarantee))
    guard_floor = max(1, min(permille(bws, rules.guard_permille), rules.guard_guarantee))
    out: dict[bytes, frozenset[Flag]] = {}
    for o in obs:
        d = o.descriptor
        flags: set[Flag] = set()
        if not o.rejected:
            flags.add(Flag.VALID)
        if is_exit(d, rules):
            flags.add(Flag.EXIT)
        if d.node_id in running:
            flags.add(Flag.RUNNING)
            if o.running_since is not None and now - o.running_since >= rules.stable_min_uptime:
                flags.add(Flag.STABLE)
            if o.measured_bandwidth >= fast_floor:
                flags.add(Flag.FAST)
            if (
                Flag.STABLE in flags
                and Flag.FAST in flags
                and now - o.first_seen >= rules.guard_min_known
                and o.measured_bandwidth >= guard_floor
            ):
                flags.add(Flag.GUARD)
            if Role.MIX in d.roles and d.mix_epoch == epoch:
                flags.add(Flag.MIX)
        out[d.node_id] = frozenset(flags)
    return out
