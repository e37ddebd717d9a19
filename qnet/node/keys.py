"""The node's data directory and the keys in it.

    store = KeyStore.open(config.node.data_dir, server_name="www.example.com", now=time.time())
    store.identity, store.link, store.mlkem, store.ticket_keys(), store.mix_keys(epoch)
    store.server_config(site)        # what serve_tcp / serve_quic need
    store.rotate_mix(epoch)          # each epoch: make next, erase those past their grace

Layout (every file 0600, both directories 0700, all owned by the running user)::

    DATA_DIR/
      keys/
        identity.key          ed25519_seed, mldsa65_seed (the long-term identity)
        link.key              x25519 (the HTX link / Noise static key)
        mlkem.key             seed (ML-KEM-768, 64 bytes)
        ticket-NNN.key        x25519, created: access-ticket key NNN (0..255)
        mix-EPOCH.key         x25519: the mix key of one epoch
        tls-cert.pem          the cover site's self-signed certificate
        tls-key.pem           its private key (PKCS#8)

Key files are small TOML documents of hex strings, so an operator can read
what is there (``ls``, ``head``) without a tool. A file is written to a
temporary name, synced and renamed, so a crash never leaves half a key.

Loading refuses a directory or a key file that the group or others may access,
or that another user owns: ``KeyStoreError`` names the path and what is wrong
(the fix is ``chmod 600``/``chmod 700``; the node will not do it silently).

Erasing a key overwrites the file with zeros, syncs, then unlinks it. On
copy-on-write or wear-levelled storage the old blocks may survive; the overwrite
is the best a program can do there (use an encrypted disk).

Pure Python over ``qnet.crypto``: no network, no Trio. PEM encoding of the TLS
certificate uses ``cryptography``'s x509 serialization (certificate handling,
not a primitive).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from qnet.crypto.primitives import MLKEM_SEED_LEN, X25519_LEN, MLKEM768Key, X25519Key, random_bytes
from qnet.dir.identity import SEED_LEN, Identity
from qnet.errors import QNetError
from qnet.htx import cover
from qnet.htx.ticket import TicketConfig
from qnet.htx.tls import CertificateKey, make_self_signed
from qnet.htx.transport import PeerInfo, ServerConfig

__all__ = [
    "KEYS_DIR",
    "KeyStore",
    "KeyStoreError",
    "MixKeys",
    "TicketKey",
    "erase_file",
]

KEYS_DIR: Final = "keys"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
#: Mix keys of this many past epochs are kept (to finish packets in flight), then erased.
MIX_GRACE_EPOCHS: Final = 1
#: Ticket ids are one byte on the wire (spec/htx.md): they wrap after 255.
TICKET_ID_MODULUS: Final = 256


class KeyStoreError(QNetError):
    """The data directory or a key file cannot be used. ``path`` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True, slots=True)
class TicketKey:
    """An access-ticket key and its one-byte id; ``created`` is Unix seconds."""

    key_id: int
    key: X25519Key
    created: int


@dataclass(frozen=True, slots=True)
class MixKeys:
    """The mix keys of ``epoch`` and of the epoch after it (published ahead)."""

    epoch: int
    current: X25519Key
    next: X25519Key


# --- files ----------------------------------------------------------------------------


def _check_mode(path: Path, *, is_dir: bool) -> None:
    try:
        st = path.lstat()
    except OSError as exc:
        raise KeyStoreError(path, f"cannot be read: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise KeyStoreError(path, "is a symbolic link; key material must be a plain file")
    if is_dir and not stat.S_ISDIR(st.st_mode):
        raise KeyStoreError(path, "is not a directory")
    if not is_dir and not stat.S_ISREG(st.st_mode):
        raise KeyStoreError(path, "is not a regular file")
    if st.st_uid != os.geteuid():
        raise KeyStoreError(path, f"is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o077:
        want = "700" if is_dir else "600"
        raise KeyStoreError(
            path,
            f"has mode {stat.S_IMODE(st.st_mode):03o}: group/other may access it "
            f"(run: chmod {want} {path})",
        )


def _ensure_dir(path: Path) -> None:
    """Create ``path`` 0700 if absent; refuse it if it exists with a looser mode."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise KeyStoreError(path, f"cannot be created: {exc.strerror}") from None
    else:
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
    _check_mode(path, is_dir=True)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_private(path: Path) -> bytes:
    _check_mode(path, is_dir=False)
    return path.read_bytes()


def erase_file(path: Path) -> None:
    """Overwrite ``path`` with zeros, sync, then unlink it. Absent is not an error."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def _key_doc(kind: str, fields: Mapping[str, bytes | int]) -> bytes:
    lines = [f"# qnet {kind} key: secret, keep this file 0600\n"]
    for name, value in fields.items():
        shown = f'"{value.hex()}"' if isinstance(value, bytes) else str(value)
        lines.append(f"{name} = {shown}\n")
    return "".join(lines).encode()


def _read_key_doc(path: Path, lengths: Mapping[str, int | None]) -> dict[str, bytes | int]:
    """Read a key file; ``lengths`` maps each field to its byte length (None: integer)."""
    raw = _read_private(path)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise KeyStoreError(path, "is not a qnet key file") from None
    out: dict[str, bytes | int] = {}
    for name, length in lengths.items():
        value = doc.get(name)
        if length is None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise KeyStoreError(path, f"{name}: missing or not an integer")
            out[name] = value
            continue
        try:
            data = bytes.fromhex(value) if isinstance(value, str) else None
        except ValueError:
            data = None
        if data is None or len(data) != length:
            raise KeyStoreError(path, f"{name}: missing or not {length} bytes of hex")
        out[name] = data
    return out


def _b(value: bytes | int) -> bytes:
    assert isinstance(value, bytes)
    return value


# --- the store ------------------------------------------------------------------------


class KeyStore:
    """Every key a node holds, loaded from (or created in) its data directory.

    Private key material is not in ``repr``. Build with :meth:`open`.
    """

    def __init__(
        self,
        data_dir: Path,
        identity: Identity,
        link: X25519Key,
        mlkem: MLKEM768Key,
        tls_chain: tuple[x509.Certificate, ...],
        tls_key: CertificateKey,
    ) -> None:
        self.data_dir = data_dir
        self.keys_dir = data_dir / KEYS_DIR
        self.identity = identity
        self.link = link
        self.mlkem = mlkem
        self.tls_chain = tls_chain
        self.tls_key = tls_key
        self._tickets: list[TicketKey] = []  # newest first, at most two
        self._mix: dict[int, X25519Key] = {}

    def __repr__(self) -> str:
        return f"KeyStore({str(self.data_dir)!r}, node_id={self.identity.node_id.hex()})"

    @classmethod
    def open(cls, data_dir: Path | str, *, server_name: str, now: float) -> KeyStore:
        """Load every key under ``data_dir``, generating (and saving) any that is absent.

        ``server_name`` goes into a new TLS certificate; ``now`` (Unix seconds)
        dates a new ticket key. Raises ``KeyStoreError`` (bad mode or owner,
        unreadable or malformed file) and ``OSError`` for a failing disk.
        """
        root = Path(data_dir)
        _ensure_dir(root)
        keys = root / KEYS_DIR
        _ensure_dir(keys)

        path = keys / "identity.key"
        if not path.exists():
            _write_private(
                path,
                _key_doc(
                    "identity",
                    {
                        "ed25519_seed": random_bytes(SEED_LEN),
                        "mldsa65_seed": random_bytes(SEED_LEN),
                    },
                ),
            )
        doc = _read_key_doc(path, {"ed25519_seed": SEED_LEN, "mldsa65_seed": SEED_LEN})
        identity = Identity(_b(doc["ed25519_seed"]), _b(doc["mldsa65_seed"]))

        link = X25519Key(_b(cls._load_or_make(keys / "link.key", "x25519", X25519_LEN)))
        mlkem = MLKEM768Key(_b(cls._load_or_make(keys / "mlkem.key", "seed", MLKEM_SEED_LEN)))
        chain, tls_key = cls._load_or_make_tls(keys, server_name)

        store = cls(root, identity, link, mlkem, chain, tls_key)
        store._load_tickets(int(now))
        return store

    @staticmethod
    def _load_or_make(path: Path, field: str, length: int) -> bytes:
        if not path.exists():
            _write_private(path, _key_doc(path.stem, {field: random_bytes(length)}))
        return _b(_read_key_doc(path, {field: length})[field])

    @staticmethod
    def _load_or_make_tls(
        keys: Path, server_name: str
    ) -> tuple[tuple[x509.Certificate, ...], CertificateKey]:
        cert_path, key_path = keys / "tls-cert.pem", keys / "tls-key.pem"
        if not (cert_path.exists() and key_path.exists()):
            cert, key = make_self_signed(server_name)
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        try:
            chain = tuple(x509.load_pem_x509_certificates(_read_private(cert_path)))
        except ValueError:
            raise KeyStoreError(cert_path, "is not a PEM certificate") from None
        try:
            loaded = serialization.load_pem_private_key(_read_private(key_path), password=None)
        except (ValueError, TypeError):
            raise KeyStoreError(key_path, "is not an unencrypted PEM private key") from None
        if not isinstance(loaded, CertificateKey):
            raise KeyStoreError(key_path, "must be an EC, Ed25519 or RSA key")
        return chain, loaded

    # -- ticket keys --

    def _ticket_files(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.keys_dir.glob("ticket-*.key"):
            digits = path.stem.removeprefix("ticket-")
            if digits.isdigit() and int(digits) < TICKET_ID_MODULUS:
                found.append((int(digits), path))
        return found

    def _load_tickets(self, now: int) -> None:
        tickets = []
        for key_id, path in self._ticket_files():
            doc = _read_key_doc(path, {"x25519": X25519_LEN, "created": None})
            tickets.append(TicketKey(key_id, X25519Key(_b(doc["x25519"])), int(doc["created"])))
        tickets.sort(key=lambda t: (t.created, t.key_id), reverse=True)
        self._tickets = tickets[:2]
        if not self._tickets:
            self.rotate_ticket(now)

    @property
    def ticket_current(self) -> TicketKey:
        """The key new tickets are built for (published in the descriptor)."""
        return self._tickets[0]

    def ticket_keys(self) -> dict[int, X25519Key]:
        """Keys a verifier accepts: the current one and the previous one, by id."""
        return {t.key_id: t.key for t in reversed(self._tickets)}

    def rotate_ticket(self, now: float) -> TicketKey:
        """Make a new current ticket key (id + 1 mod 256); keep one previous; erase older."""
        key_id = (self._tickets[0].key_id + 1) % TICKET_ID_MODULUS if self._tickets else 0
        key = X25519Key.generate()
        created = int(now)
        _write_private(
            self.keys_dir / f"ticket-{key_id:03d}.key",
            _key_doc("ticket", {"x25519": key.private_bytes, "created": created}),
        )
        self._tickets = [TicketKey(key_id, key, created), *self._tickets[:1]]
        keep = {t.key_id for t in self._tickets}
        for old_id, path in self._ticket_files():
            if old_id not in keep:
                erase_file(path)
        return self._tickets[0]

    # -- mix keys --

    def _mix_path(self, epoch: int) -> Path:
        return self.keys_dir / f"mix-{epoch}.key"

    def _mix_key(self, epoch: int) -> X25519Key:
        if epoch not in self._mix:
            path = self._mix_path(epoch)
            if not path.exists():
                _write_private(path, _key_doc("mix", {"x25519": random_bytes(X25519_LEN)}))
            self._mix[epoch] = X25519Key(_b(_read_key_doc(path, {"x25519": X25519_LEN})["x25519"]))
        return self._mix[epoch]

    def mix_epochs_on_disk(self) -> list[int]:
        """Epochs whose mix key file exists, ascending."""
        out = []
        for path in self.keys_dir.glob("mix-*.key"):
            digits = path.stem.removeprefix("mix-")
            if digits.isdigit():
                out.append(int(digits))
        return sorted(out)

    def mix_keys(self, epoch: int) -> MixKeys:
        """The keys of ``epoch`` and ``epoch + 1``, created if absent. Erases nothing."""
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        return MixKeys(epoch, self._mix_key(epoch), self._mix_key(epoch + 1))

    def mix_key(self, epoch: int) -> X25519Key | None:
        """A key still held for ``epoch`` (current, next or within the grace), else None."""
        if epoch in self._mix:
            return self._mix[epoch]
        return self._mix_key(epoch) if self._mix_path(epoch).exists() else None

    def erase_mix(self, epoch: int) -> None:
        """Forget and erase the key of ``epoch`` (for a schedule that decides the timing,
        such as ``qnet.dir.rotation.MixKeySchedule.erase_expired``)."""
        self._mix.pop(epoch, None)
        erase_file(self._mix_path(epoch))

    def rotate_mix(self, epoch: int, grace_epochs: int = MIX_GRACE_EPOCHS) -> MixKeys:
        """Enter ``epoch``: make sure this and the next epoch's keys exist, and erase
        every key older than ``epoch - grace_epochs`` (from memory and from disk)."""
        keys = self.mix_keys(epoch)
        for old in {*self._mix, *self.mix_epochs_on_disk()}:
            if old < epoch - grace_epochs:
                self.erase_mix(old)
        return keys

    # -- what the HTX layer needs --

    def server_config(
        self,
        site: cover.CoverSite = cover.DEFAULT_SITE,
        *,
        handshake_timeout: float = 15.0,
        on_handshake_failure: Callable[[str], None] | None = None,
        ticket_config: TicketConfig | None = None,
    ) -> ServerConfig:
        """The ``ServerConfig`` for ``serve_tcp``/``serve_quic`` with this node's keys."""
        return ServerConfig(
            link_private=self.link.private_bytes,
            mlkem=self.mlkem,
            ticket_keys=self.ticket_keys(),
            certificate_chain=self.tls_chain,
            certificate_key=self.tls_key,
            site=site,
            handshake_timeout=handshake_timeout,
            on_handshake_failure=on_handshake_failure,
            ticket_config=ticket_config or TicketConfig(),
        )

    def peer_info(self, host: str, port: int, server_name: str) -> PeerInfo:
        """How a dialer reaches this node at ``host:port`` (what the descriptor publishes)."""
        ticket = self.ticket_current
        return PeerInfo(
            host=host,
            port=port,
            link_public=self.link.public_bytes,
            mlkem_public=self.mlkem.public_bytes,
            ticket_public=ticket.key.public_bytes,
            ticket_key_id=ticket.key_id,
            server_name=server_name,
        )
