"""The node's data directory: modes, reloading, refusing loose files, rotation and erasure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qnet.node.keys import KeyStore, KeyStoreError, erase_file

NOW = 1_700_000_000.0


def _open(path: Path) -> KeyStore:
    return KeyStore.open(path, server_name="www.example.com", now=NOW)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_with_private_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a typical umask must not loosen anything
    try:
        store = _open(tmp_path / "data")
    finally:
        os.umask(old)
    store.rotate_mix(10)
    assert _mode(tmp_path / "data") == 0o700
    assert _mode(store.keys_dir) == 0o700
    names = sorted(p.name for p in store.keys_dir.iterdir())
    assert names == [
        "identity.key",
        "link.key",
        "mix-10.key",
        "mix-11.key",
        "mlkem.key",
        "ticket-000.key",
        "tls-cert.pem",
        "tls-key.pem",
    ]
    for p in store.keys_dir.iterdir():
        assert _mode(p) == 0o600, p


def test_reopening_loads_the_same_keys(tmp_path: Path) -> None:
    a = _open(tmp_path / "d")
    mix_a = a.mix_keys(3)
    b = _open(tmp_path / "d")
    assert a.identity.node_id == b.identity.node_id
    assert a.link.public_bytes == b.link.public_bytes
    assert a.mlkem.public_bytes == b.mlkem.public_bytes
    assert a.ticket_current.key_id == b.ticket_current.key_id
    assert a.ticket_current.key.public_bytes == b.ticket_current.key.public_bytes
    assert a.tls_chain[0] == b.tls_chain[0]
    mix_b = b.mix_keys(3)
    assert mix_a.current.public_bytes == mix_b.current.public_bytes
    assert mix_a.next.public_bytes == mix_b.next.public_bytes
    assert mix_a.current.public_bytes != mix_a.next.public_bytes
    assert "seed" not in repr(a) and a.identity.node_id.hex() in repr(a)


@pytest.mark.parametrize("name", ["identity.key", "link.key", "mlkem.key", "tls-key.pem"])
def test_a_loose_key_file_is_refused(tmp_path: Path, name: str) -> None:
    store = _open(tmp_path / "d")
    path = store.keys_dir / name
    path.chmod(0o644)
    with pytest.raises(KeyStoreError) as info:
        _open(tmp_path / "d")
    assert info.value.path == path
    assert "644" in str(info.value) and name in str(info.value)


def test_a_loose_directory_is_refused(tmp_path: Path) -> None:
    _open(tmp_path / "d")
    (tmp_path / "d").chmod(0o750)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        _open(tmp_path / "d")


def test_a_symlinked_or_malformed_key_is_refused(tmp_path: Path) -> None:
    store = _open(tmp_path / "d")
    link = store.keys_dir / "link.key"
    link.write_text('x25519 = "00"\n')
    with pytest.raises(KeyStoreError, match="32 bytes"):
        _open(tmp_path / "d")
    link.unlink()
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o600)
    link.symlink_to(target)
    with pytest.raises(KeyStoreError, match="symbolic link"):
        _open(tmp_path / "d")


def test_mix_rotation_erases_keys_past_the_grace(tmp_path: Path) -> None:
    store = _open(tmp_path / "d")
    first = store.rotate_mix(5)
    assert store.mix_epochs_on_disk() == [5, 6]
    store.rotate_mix(6)
    assert store.mix_epochs_on_disk() == [5, 6, 7]  # epoch 5 is in its grace period
    assert store.mix_key(5) is not None
    store.rotate_mix(7)
    assert store.mix_epochs_on_disk() == [6, 7, 8]
    assert store.mix_key(5) is None
    # The key of epoch 6 was published as "next" during epoch 5 and is the same key now.
    assert store.mix_keys(6).current.public_bytes == first.next.public_bytes
    store.rotate_mix(20, grace_epochs=0)
    assert store.mix_epochs_on_disk() == [20, 21]


def test_ticket_rotation_keeps_current_and_previous(tmp_path: Path) -> None:
    store = _open(tmp_path / "d")
    t0 = store.ticket_current
    t1 = store.rotate_ticket(NOW + 3600)
    assert t1.key_id == t0.key_id + 1
    assert set(store.ticket_keys()) == {t0.key_id, t1.key_id}
    t2 = store.rotate_ticket(NOW + 7200)
    assert set(store.ticket_keys()) == {t1.key_id, t2.key_id}
    files = sorted(p.name for p in store.keys_dir.glob("ticket-*.key"))
    assert files == ["ticket-001.key", "ticket-002.key"]
    reopened = _open(tmp_path / "d")
    assert reopened.ticket_current.key_id == t2.key_id
    assert set(reopened.ticket_keys()) == {t1.key_id, t2.key_id}


def test_ticket_ids_wrap(tmp_path: Path) -> None:
    store = _open(tmp_path / "d")
    for i in range(256):
        store.rotate_ticket(NOW + i + 1)
    assert store.ticket_current.key_id == 0
    assert set(store.ticket_keys()) == {255, 0}


def test_erase_overwrites_before_unlinking(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xaa" * 64)
    fd = os.open(path, os.O_RDONLY)  # an open descriptor still sees the inode after unlink
    try:
        erase_file(path)
        assert not path.exists()
        assert os.pread(fd, 64, 0) == bytes(64)
    finally:
        os.close(fd)
    erase_file(path)  # absent: nothing to do


def test_server_config_and_peer_info_match(tmp_path: Path) -> None:
    store = _open(tmp_path / "d")
    cfg = store.server_config()
    assert cfg.link_private == store.link.private_bytes
    assert cfg.ticket_keys.keys() == store.ticket_keys().keys()
    peer = store.peer_info("127.0.0.1", 4433, "www.example.com")
    assert peer.link_public == store.link.public_bytes
    assert peer.ticket_key_id == store.ticket_current.key_id


def test_erase_one_mix_key(tmp_path: Path) -> None:
    store = _open(tmp_path / "d")
    store.mix_keys(4)
    store.erase_mix(4)
    assert store.mix_epochs_on_disk() == [5] and store.mix_key(4) is None
