"""Persistent entry guards (spec/paths.md §4), in the spirit of Tor's proposal 271.

    guards = load_guards(data_dir / GUARDS_FILE, GuardConfig.builder().build())
    selector = PathSelector(consensus, path_config, rng, guards=guards)
    path = selector.build_path(443, now=now)        # entry from the primary guards
    guards.note_failure(path.entry_id, now)         # or note_success, after the dial
    if guards.dirty:
        save_guards(data_dir / GUARDS_FILE, guards)

A client keeps a bounded *sample* of Guard-flagged nodes, drawn once,
bandwidth-weighted, and kept across restarts. Its first ``n_primary`` members
that the current consensus lists as usable are the *primary* guards, and every
path starts at one of them: the first that is reachable, unless the path rules
exclude it. Only when no primary guard can serve does the rest of the sample
(in order) take over; the sample never grows past ``sample_size``, so blocking
connections cannot walk a client across the whole network.

Each guard gets a random lifetime (``lifetime_min``..``lifetime_max``) when it
is sampled and leaves the sample when that ends, or as soon as a consensus no
longer lists it at all (a guard that only lost a flag stays, unused, in case it
comes back). After ``failure_threshold`` consecutive failures a guard is marked
unreachable and skipped until its retry time, which backs off from
``retry_initial`` doubling up to ``retry_max``; one success clears it.

Everything but ``load_guards``/``save_guards`` is pure; ``now`` is an argument.

A corrupt state file is refused with ``GuardStateError`` naming the file (the
default): quietly choosing new guards would hand the first hop to new, possibly
hostile nodes, and the file is only ever replaced atomically, so damage means a
disk fault or tampering, which the user should look at. ``load_guards(...,
on_corrupt="fresh")`` instead moves the file aside (``<name>.corrupt``), logs a
warning and starts a new sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from qnet.client.path import ConfigBuilder, _check_int, weighted_index
from qnet.dir.consensus import Consensus
from qnet.errors import QNetError

log = logging.getLogger(__name__)

GUARDS_FILE: Final = "guards.json"
STATE_FORMAT: Final = "qnet-guards-v1"
WEEK: Final = 7 * 86_400
NODE_ID_LEN: Final = 32


class GuardStateError(QNetError):
    """The guard state file could not be used. ``path`` names it, ``reason`` is
    ``corrupt`` (not the JSON this module writes) or ``unreadable`` (an OS error)."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"guard state file {path}: {reason}: {detail}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardConfig:
    """Guard policy. Make one with ``GuardConfig.builder()...build()``. Times in seconds.

    n_primary: how many usable sampled guards are primary (3).
    sample_size: the most guards ever sampled at once (20).
    lifetime_min / lifetime_max: a sampled guard's lifetime is drawn uniformly
        from this range (4 and 8 weeks).
    failure_threshold: consecutive failures that mark a guard unreachable (2).
    retry_initial / retry_max: the first wait before an unreachable guard is tried
        again, doubled on each further failure up to the maximum (10 min, 36 h).
    """

    n_primary: int = 3
    sample_size: int = 20
    lifetime_min: int = 4 * WEEK
    lifetime_max: int = 8 * WEEK
    failure_threshold: int = 2
    retry_initial: int = 600
    retry_max: int = 36 * 3600

    def __post_init__(self) -> None:
        owner = "GuardConfig"
        _check_int(owner, "n_primary", self.n_primary, 1)
        _check_int(owner, "sample_size", self.sample_size, self.n_primary)
        _check_int(owner, "lifetime_min", self.lifetime_min, 1)
        _check_int(owner, "lifetime_max", self.lifetime_max, self.lifetime_min)
        _check_int(owner, "failure_threshold", self.failure_threshold, 1)
        _check_int(owner, "retry_initial", self.retry_initial, 1)
        _check_int(owner, "retry_max", self.retry_max, self.retry_initial)

    @classmethod
    def builder(cls, **values: Any) -> ConfigBuilder[GuardConfig]:
        return ConfigBuilder(cls, **values)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardRecord:
    """One sampled guard. Times are Unix seconds; ``retry_at`` is set while unreachable."""

    node_id: bytes
    added_at: int
    expires_at: int
    failures: int = 0
    unreachable_since: int | None = None
    retry_at: int | None = None

    def reachable(self, now: float) -> bool:
        """Not marked unreachable, or due for its retry."""
        return self.retry_at is None or now >= self.retry_at

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id.hex(),
            "added_at": self.added_at,
            "expires_at": self.expires_at,
            "failures": self.failures,
            "unreachable_since": self.unreachable_since,
            "retry_at": self.retry_at,
        }

    @classmethod
    def from_json(cls, value: object) -> GuardRecord:
        """Raises ``ValueError`` naming the bad field."""
        if not isinstance(value, dict) or set(value) != _RECORD_KEYS:
            raise ValueError(f"a guard must be a map with exactly {sorted(_RECORD_KEYS)}")
        try:
            node_id = bytes.fromhex(_field(value, "node_id", str))
        except ValueError:
            raise ValueError("node_id: not hex") from None
        if len(node_id) != NODE_ID_LEN:
            raise ValueError(f"node_id: must be {NODE_ID_LEN} bytes")
        added, expires = _uint(value, "added_at"), _uint(value, "expires_at")
        if expires <= added:
            raise ValueError("expires_at: must be after added_at")
        since, retry = _opt_uint(value, "unreachable_since"), _opt_uint(value, "retry_at")
        if (since is None) != (retry is None):
            raise ValueError("unreachable_since and retry_at: both set or both null")
        return cls(
            node_id=node_id,
            added_at=added,
            expires_at=expires,
            failures=_uint(value, "failures"),
            unreachable_since=since,
            retry_at=retry,
        )


_RECORD_KEYS: Final = frozenset(
    {"node_id", "added_at", "expires_at", "failures", "unreachable_since", "retry_at"}
)


def _field(m: dict[Any, Any], name: str, kind: type[Any]) -> Any:
    value = m[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name}: must be {kind.__name__}")
    return value


def _uint(m: dict[Any, Any], name: str) -> int:
    value: int = _field(m, name, int)
    if value < 0:
        raise ValueError(f"{name}: must not be negative")
    return value


def _opt_uint(m: dict[Any, Any], name: str) -> int | None:
    return None if m[name] is None else _uint(m, name)


class GuardView(Protocol):
    """What the guard set needs to know about the current consensus
    (``qnet.client.path.PathSelector`` provides it)."""

    @property
    def consensus(self) -> Consensus: ...

    def usable_guard(self, node_id: bytes, *, stable: bool = False) -> bool: ...

    def guard_candidates(self) -> list[tuple[bytes, int]]: ...


@dataclass(frozen=True, slots=True)
class GuardChanges:
    """What one ``update`` did: node ids added to and dropped from the sample."""

    added: tuple[bytes, ...] = ()
    dropped: tuple[bytes, ...] = ()


class GuardSet:
    """The sampled guards, in sample order (the order primary guards are taken in).

    ``dirty`` is set by every change and cleared by ``save_guards``.
    """

    def __init__(
        self,
        config: GuardConfig | None = None,
        rng: random.Random | None = None,
        records: Iterable[GuardRecord] = (),
    ) -> None:
        self.config = config if config is not None else GuardConfig()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._records: list[GuardRecord] = list(records)
        if len({r.node_id for r in self._records}) != len(self._records):
            raise ValueError("a guard appears twice")
        self.dirty = False

    @property
    def records(self) -> tuple[GuardRecord, ...]:
        return tuple(self._records)

    def _index(self, node_id: bytes) -> int | None:
        for i, r in enumerate(self._records):
            if r.node_id == node_id:
                return i
        return None

    def get(self, node_id: bytes) -> GuardRecord | None:
        i = self._index(node_id)
        return None if i is None else self._records[i]

    def update(self, view: GuardView, now: float) -> GuardChanges:
        """Follow a consensus: drop guards it does not list and guards whose lifetime
        is over, then top the sample up to ``sample_size`` with Guard-flagged nodes,
        bandwidth-weighted (guard position), each with a fresh random lifetime."""
        t = int(now)
        listed = {n.node_id for n in view.consensus.nodes}
        keep = [r for r in self._records if r.node_id in listed and t < r.expires_at]
        dropped = tuple(r.node_id for r in self._records if r not in keep)
        self._records = keep
        added: list[bytes] = []
        taken = {r.node_id for r in keep}
        cands = [(nid, w) for nid, w in view.guard_candidates() if nid not in taken]
        while len(self._records) < self.config.sample_size and cands:
            nid, _ = cands.pop(weighted_index([w for _, w in cands], self._rng))
            lifetime = self._rng.randint(self.config.lifetime_min, self.config.lifetime_max)
            self._records.append(GuardRecord(node_id=nid, added_at=t, expires_at=t + lifetime))
            added.append(nid)
        for nid in dropped:
            log.info("guard %s left the sample", nid.hex()[:16])
        if dropped or added:
            self.dirty = True
        return GuardChanges(added=tuple(added), dropped=dropped)

    def primary(self, view: GuardView) -> tuple[bytes, ...]:
        """The first ``n_primary`` sampled guards that ``view`` lists as usable."""
        usable = [r.node_id for r in self._records if view.usable_guard(r.node_id)]
        return tuple(usable[: self.config.n_primary])

    def entry_candidates(self, view: GuardView, now: float) -> tuple[bytes, ...]:
        """Entries to try, best first: the reachable primary guards in order, then the
        other usable, reachable sampled guards (used only when no primary can serve)."""
        primary = self.primary(view)
        rest = [
            r.node_id
            for r in self._records
            if r.node_id not in primary and view.usable_guard(r.node_id)
        ]
        ordered = [*primary, *rest]
        by_id = {r.node_id: r for r in self._records}
        return tuple(nid for nid in ordered if by_id[nid].reachable(now))

    def note_success(self, node_id: bytes, now: float) -> None:
        """A link to (or a circuit through) this guard worked: clear its failures."""
        del now  # kept for symmetry with note_failure (and a future "last success")
        i = self._index(node_id)
        if i is None:
            return
        r = self._records[i]
        if r.failures or r.retry_at is not None:
            self._records[i] = dataclasses.replace(
                r, failures=0, unreachable_since=None, retry_at=None
            )
            self.dirty = True

    def note_failure(self, node_id: bytes, now: float) -> None:
        """The guard could not be reached. From ``failure_threshold`` consecutive
        failures on it is unreachable until a retry time that backs off."""
        i = self._index(node_id)
        if i is None:
            return
        t = int(now)
        r = self._records[i]
        failures = r.failures + 1
        cfg = self.config
        if failures < cfg.failure_threshold:
            self._records[i] = dataclasses.replace(r, failures=failures)
        else:
            extra = min(failures - cfg.failure_threshold, 32)
            wait = min(cfg.retry_max, cfg.retry_initial * 2**extra)
            since = r.unreachable_since if r.unreachable_since is not None else t
            self._records[i] = dataclasses.replace(
                r, failures=failures, unreachable_since=since, retry_at=t + wait
            )
            log.info("guard %s unreachable; retry in %d s", node_id.hex()[:16], wait)
        self.dirty = True

    # -- the state file's contents --

    def to_json(self) -> dict[str, object]:
        return {"format": STATE_FORMAT, "guards": [r.to_json() for r in self._records]}

    @classmethod
    def from_json(
        cls, value: object, config: GuardConfig | None = None, rng: random.Random | None = None
    ) -> GuardSet:
        """Raises ``ValueError`` saying what is wrong."""
        if not isinstance(value, dict) or set(value) != {"format", "guards"}:
            raise ValueError('expected a map with exactly "format" and "guards"')
        if value["format"] != STATE_FORMAT:
            raise ValueError(f"format: expected {STATE_FORMAT!r}, got {value['format']!r}")
        if not isinstance(value["guards"], list):
            raise ValueError("guards: must be a list")
        records = []
        for i, g in enumerate(value["guards"]):
            try:
                records.append(GuardRecord.from_json(g))
            except ValueError as exc:
                raise ValueError(f"guards[{i}]: {exc}") from None
        return cls(config, rng, records)


# --- the file -------------------------------------------------------------------------------


def load_guards(
    path: str | os.PathLike[str],
    config: GuardConfig | None = None,
    rng: random.Random | None = None,
    *,
    on_corrupt: Literal["raise", "fresh"] = "raise",
) -> GuardSet:
    """The guard set stored at ``path``; an empty one if the file does not exist.

    A file that cannot be read raises ``GuardStateError("unreadable")``. A file that
    is not valid guard state raises ``GuardStateError("corrupt")``, or, with
    ``on_corrupt="fresh"``, is renamed to ``<path>.corrupt`` and an empty set is
    returned (with a warning in the log).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return GuardSet(config, rng)
    except OSError as exc:
        raise GuardStateError(p, "unreadable", str(exc)) from exc
    try:
        return GuardSet.from_json(json.loads(raw), config, rng)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        if on_corrupt != "fresh":
            raise GuardStateError(p, "corrupt", str(exc)) from None
        aside = p.with_name(p.name + ".corrupt")
        log.warning("guard state %s is corrupt (%s); moved to %s, sampling anew", p, exc, aside)
        os.replace(p, aside)
        fresh = GuardSet(config, rng)
        fresh.dirty = True
        return fresh


def save_guards(path: str | os.PathLike[str], guards: GuardSet) -> None:
    """Write the guard state atomically (temporary file, fsync, rename) with mode 0600,
    then clear ``guards.dirty``. ``OSError`` passes through; the old file stays intact."""
    p = Path(path)
    data = (json.dumps(guards.to_json(), indent=1, sort_keys=True) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where possible
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    guards.dirty = False
