"""The vault: AES-256-GCM values bound to their context, and the master key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2mgw.config import parse_config
from m2mgw.core import vault as vault_module
from m2mgw.core.registry import RegistryError
from m2mgw.core.vault import (
    KEY_BYTES,
    NONCE_BYTES,
    PREFIX,
    Vault,
    VaultError,
    create_key,
    create_private,
    is_sealed,
    read_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CONTEXT = "terminals/1/current"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_sealed_value_is_standard_aes_gcm_bound_to_its_context() -> None:
    sealed = Vault(KEY).seal(b"Up1ink0A", CONTEXT)
    assert sealed.startswith(PREFIX) and is_sealed(sealed)
    assert len(sealed) == len(PREFIX) + NONCE_BYTES + len(b"Up1ink0A") + 16
    assert b"Up1ink0A" not in sealed
    # Anyone holding the key can read the format with any AES-GCM implementation.
    start = len(PREFIX)
    nonce, body = sealed[start : start + NONCE_BYTES], sealed[start + NONCE_BYTES :]
    assert AESGCM(KEY).decrypt(nonce, body, CONTEXT.encode()) == b"Up1ink0A"
    assert Vault(KEY).open(sealed, CONTEXT) == b"Up1ink0A"


def test_each_new_value_gets_a_fresh_nonce() -> None:
    vault = Vault(KEY)
    first = vault.seal(b"one", CONTEXT)
    second = vault.seal(b"two", CONTEXT)
    third = vault.seal(b"one", "terminals/2/current")
    nonces = {v[len(PREFIX) : len(PREFIX) + NONCE_BYTES] for v in (first, second, third)}
    assert len(nonces) == 3


def test_an_unchanged_value_is_not_sealed_again() -> None:
    """Saving a record whose secret did not change reuses the stored value (D-285)."""
    vault = Vault(KEY)
    sealed = vault.seal(b"secret", CONTEXT)
    assert vault.seal(b"secret", CONTEXT) is sealed
    opened = Vault(KEY)
    opened.open(sealed, CONTEXT)  # loading remembers it too
    assert opened.seal(b"secret", CONTEXT) is sealed
    assert vault.seal(b"changed", CONTEXT) != sealed


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vault_module, "MEMO_SIZE", 3)
    vault = Vault(KEY)
    first = vault.seal(b"x", "c/0/v")
    for i in range(1, 4):
        vault.seal(b"x", f"c/{i}/v")
    assert len(vault._memo) == 3
    again = vault.seal(b"x", "c/0/v")
    assert again != first and vault.open(again, "c/0/v") == b"x"


@pytest.mark.parametrize("context", ["terminals/2/current", "terminals/1/pending",
                                     "applications/1/current"])
def test_a_value_moved_to_another_row_or_column_does_not_open(context: str) -> None:
    sealed = Vault(KEY).seal(b"Up1ink0A", CONTEXT)
    with pytest.raises(VaultError, match=f"^{context} does not decrypt under the master key: "
                       "it was altered, or moved from another row or column$"):
        Vault(KEY).open(sealed, context)


def test_altered_values_and_other_keys_do_not_open() -> None:
    sealed = Vault(KEY).seal(b"Up1ink0A", CONTEXT)
    with pytest.raises(VaultError, match="does not decrypt"):
        Vault(OTHER_KEY).open(sealed, CONTEXT)
    for index in (len(PREFIX), len(PREFIX) + NONCE_BYTES, len(sealed) - 1):
        altered = bytearray(sealed)
        altered[index] ^= 1
        with pytest.raises(VaultError, match="does not decrypt"):
            Vault(KEY).open(bytes(altered), CONTEXT)


def test_plaintext_where_a_sealed_value_belongs_is_refused() -> None:
    """Without the key nobody can write a value the registry accepts (D-282)."""
    for plaintext in ("Up1ink0A", b"Up1ink0A", b""):
        assert not is_sealed(plaintext)
        with pytest.raises(VaultError, match=f"^{CONTEXT} is stored in plaintext"):
            Vault(KEY).open(plaintext, CONTEXT)  # type: ignore[arg-type]


def test_check_value_names_the_key_without_revealing_it() -> None:
    check = Vault(KEY).check_value
    assert len(check) == 16 and int(check, 16) >= 0
    assert check == Vault(KEY).check_value != Vault(OTHER_KEY).check_value
    assert KEY.hex()[:16] != check
    with pytest.raises(VaultError, match="32 bytes, not 5"):
        Vault(b"short")
    assert issubclass(VaultError, RegistryError)  # start-up reports it in one line


# --- the key file ----------------------------------------------------------------------


def test_key_file_is_created_0600_with_32_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m2mgw.key"
    created = create_key(str(path))
    assert mode(path) == 0o600
    assert path.read_bytes() == created.key and len(created.key) == KEY_BYTES
    assert not created.exposed
    assert read_key(str(path)) == created
    assert create_key(str(tmp_path / "other.key")).key != created.key


def test_creating_never_replaces_a_key(tmp_path: Path) -> None:
    path = tmp_path / "m2mgw.key"
    path.write_bytes(KEY)
    assert create_key(str(path)).key == KEY
    assert path.read_bytes() == KEY


def test_key_file_problems_are_one_line(tmp_path: Path) -> None:
    assert read_key(str(tmp_path / "absent.key")) is None
    short = tmp_path / "short.key"
    short.write_bytes(b"12345")
    with pytest.raises(VaultError, match=f"^the master key file {short} holds 5 bytes, not 32: "
                       "it is not an m2mgw master key$"):
        read_key(str(short))
    long = tmp_path / "long.key"
    long.write_bytes(KEY + b"\n")
    with pytest.raises(VaultError, match="holds more than 32 bytes"):
        read_key(str(long))
    missing = tmp_path / "missing" / "m2mgw.key"
    with pytest.raises(VaultError, match=f"^cannot create the master key file {missing}: "
                       "No such file or directory$"):
        create_key(str(missing))
    directory = tmp_path / "dir.key"
    directory.mkdir()
    with pytest.raises(VaultError, match=r"^cannot read the master key file"):
        read_key(str(directory))


def test_a_key_file_others_can_read_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "m2mgw.key"
    path.write_bytes(KEY)
    path.chmod(0o644)
    key = read_key(str(path))
    assert key is not None and key.exposed and key.mode == 0o644


def test_create_private(tmp_path: Path) -> None:
    path = tmp_path / "m2mgw.db"
    assert create_private(str(path))
    assert mode(path) == 0o600 and path.read_bytes() == b""
    path.write_bytes(b"kept")
    assert not create_private(str(path))
    assert path.read_bytes() == b"kept"


def test_the_key_file_setting_defaults_beside_the_database() -> None:
    registry = parse_config("[registry]\ndatabase = /var/lib/m2mgw/gw.db\n").registry
    assert (registry.master_key_file, registry.master_key_path) == ("", "/var/lib/m2mgw/m2mgw.key")
    named = parse_config("[registry]\nmaster_key_file = keys/gw.key\n").registry
    assert named.master_key_path == "keys/gw.key"
