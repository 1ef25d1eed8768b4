"""Key store: file modes, loading refusals, thumbprint kids, rotation with grace, secret hiding."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.credentials import KeyStore, SigningKey
from gatepass.credentials._jose import b64url_decode, ed25519_thumbprint
from gatepass.credentials.keystore import METADATA_FILE
from gatepass.errors import ConfigError, KeyStoreError, KeyUnknownError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=10)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_files(store_dir: Path) -> list[Path]:
    return sorted(store_dir.glob("*.pem"))


def test_open_creates_private_dir_key_and_metadata(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes must not depend on a friendly umask
    try:
        store = KeyStore.open(tmp_path / "keys", now=NOW)
    finally:
        os.umask(old_umask)
    store_dir = tmp_path / "keys"
    assert mode(store_dir) == 0o700
    [key_file] = key_files(store_dir)
    assert key_file.name == f"{store.active.kid}.pem"
    assert mode(key_file) == 0o600
    assert mode(store_dir / METADATA_FILE) == 0o600
    meta = json.loads((store_dir / METADATA_FILE).read_text())
    assert meta["keys"] == [
        {
            "kid": store.active.kid,
            "created_at": NOW.isoformat(),
            "retired_at": None,
            "publish_until": None,
        }
    ]
    assert not list(store_dir.glob(".*.tmp"))


def test_reopen_loads_the_same_active_key(tmp_path: Path) -> None:
    first = KeyStore.open(tmp_path / "keys", now=NOW)
    again = KeyStore.open(tmp_path / "keys", create=False)
    assert again.active.kid == first.active.kid
    assert len(key_files(tmp_path / "keys")) == 1


def test_missing_store_without_create_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError) as err:
        KeyStore.open(tmp_path / "nowhere", create=False)
    assert err.value.code == "keystore_error"
    assert not (tmp_path / "nowhere").exists()


def test_directory_without_metadata_and_create_false_raises(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o700)
    with pytest.raises(KeyStoreError, match=METADATA_FILE):
        KeyStore.open(tmp_path / "keys", create=False)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"version": 1, "keys": [], "keys": []}',  # duplicate member
        b'{"version": 1, "keys": []}',  # no active key
        b'{"version": 2, "keys": []}',
        b'{"version": 1, "keys": [{"kid": "../x", "created_at": "2025-01-01T00:00:00+00:00"}]}',
    ],
)
def test_corrupt_metadata_raises_even_with_create(tmp_path: Path, content: bytes) -> None:
    KeyStore.open(tmp_path / "keys", now=NOW)
    (tmp_path / "keys" / METADATA_FILE).write_bytes(content)
    with pytest.raises(KeyStoreError, match="corrupt metadata"):
        KeyStore.open(tmp_path / "keys", create=True)


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o610])
def test_refuses_key_file_readable_by_others(tmp_path: Path, bad_mode: int) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    [key_file] = key_files(tmp_path / "keys")
    pem = key_file.read_text()
    key_file.chmod(bad_mode)
    with pytest.raises(KeyStoreError) as err:
        KeyStore.open(tmp_path / "keys")
    message = str(err.value)
    assert key_file.name in message and f"{bad_mode:04o}" in message
    assert store.active.kid in message  # the file is named...
    body = "".join(pem.splitlines()[1:-1])
    assert body not in message and body[:20] not in message  # ...its contents are not


def test_refuses_key_file_that_does_not_match_its_kid(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    key_file = tmp_path / "keys" / f"{store.active.kid}.pem"
    key_file.unlink()
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_file, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, other)
    os.close(fd)
    with pytest.raises(KeyStoreError, match="different key"):
        KeyStore.open(tmp_path / "keys")


def test_refuses_garbage_key_file_without_echoing_it(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    key_file = tmp_path / "keys" / f"{store.active.kid}.pem"
    key_file.write_bytes(b"SECRET-LOOKING-BYTES")
    with pytest.raises(KeyStoreError) as err:
        KeyStore.open(tmp_path / "keys")
    assert "SECRET-LOOKING-BYTES" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_refuses_group_writable_directory(tmp_path: Path) -> None:
    KeyStore.open(tmp_path / "keys", now=NOW)
    (tmp_path / "keys").chmod(0o770)
    with pytest.raises(KeyStoreError, match="writable"):
        KeyStore.open(tmp_path / "keys")


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.1 / A.3: this Ed25519 key's thumbprint is kPrK_qmx...
    d = b64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    x = b64url_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    expected = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert ed25519_thumbprint(x) == expected
    assert SigningKey(Ed25519PrivateKey.from_private_bytes(d)).kid == expected


def test_jwks_holds_only_public_members(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    [jwk] = store.jwks(now=NOW)["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
    assert "d" not in jwk
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
    assert jwk["kid"] == store.active.kid == ed25519_thumbprint(b64url_decode(jwk["x"]))


def test_rotation_keeps_the_retired_key_published_for_the_grace_then_prunes(
    tmp_path: Path,
) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    old = store.active.kid
    new = store.rotate(now=NOW, grace=GRACE)
    assert new != old and store.active.kid == new

    def kids(at: datetime) -> list[str]:
        return [k["kid"] for k in store.jwks(now=at)["keys"]]

    assert kids(NOW) == [new, old]  # active first
    assert kids(NOW + GRACE - timedelta(microseconds=1)) == [new, old]
    assert kids(NOW + GRACE) == [new]
    assert store.public_key(old) is not None  # still held until pruned

    assert store.prune(now=NOW + GRACE - timedelta(seconds=1)) == []
    assert store.prune(now=NOW + GRACE) == [old]
    assert [p.name for p in key_files(tmp_path / "keys")] == [f"{new}.pem"]
    with pytest.raises(KeyUnknownError):
        store.public_key(old)
    reopened = KeyStore.open(tmp_path / "keys", create=False)
    assert reopened.active.kid == new
    assert [k["kid"] for k in reopened.jwks(now=NOW)["keys"]] == [new]


def test_rotation_is_persisted_and_prunes_expired_keys(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    first = store.active.kid
    second = store.rotate(now=NOW, grace=GRACE)
    reopened = KeyStore.open(tmp_path / "keys", create=False)
    assert reopened.active.kid == second
    assert [k["kid"] for k in reopened.jwks(now=NOW)["keys"]] == [second, first]
    meta = json.loads((tmp_path / "keys" / METADATA_FILE).read_text())
    retired = next(k for k in meta["keys"] if k["kid"] == first)
    assert retired["retired_at"] == NOW.isoformat()
    assert retired["publish_until"] == (NOW + GRACE).isoformat()

    later = NOW + GRACE + timedelta(minutes=1)
    third = reopened.rotate(now=later, grace=GRACE)  # rotation prunes `first` on the way
    assert [k["kid"] for k in reopened.jwks(now=later)["keys"]] == [third, second]
    assert {p.name for p in key_files(tmp_path / "keys")} == {f"{second}.pem", f"{third}.pem"}


def test_rotate_refuses_negative_grace_and_naive_now(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    with pytest.raises(ConfigError) as err:
        store.rotate(now=NOW, grace=timedelta(seconds=-1))
    assert err.value.key == "key_rotation_grace"
    with pytest.raises(ValueError, match="timezone-aware"):
        store.rotate(now=datetime(2025, 6, 1), grace=GRACE)


def test_write_jwks_is_atomic_public_json(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    target = tmp_path / "public" / "jwks.json"
    target.parent.mkdir()
    store.write_jwks(target, now=NOW)
    assert json.loads(target.read_text()) == store.jwks(now=NOW)
    assert mode(target) == 0o644
    store.rotate(now=NOW, grace=GRACE)
    store.write_jwks(target, now=NOW)
    assert len(json.loads(target.read_text())["keys"]) == 2
    assert [p.name for p in target.parent.iterdir()] == ["jwks.json"]


def test_public_key_lookup(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    assert store.public_key(store.active.kid) is not None
    with pytest.raises(KeyUnknownError) as err:
        store.public_key("nope")
    assert err.value.code == "kid_unknown"


def secret_spellings(key: SigningKey) -> list[str]:
    raw = key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pem_body = "".join(pem.splitlines()[1:-1])
    return [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        pem_body,
        repr(raw),
    ]


def test_repr_and_str_never_show_private_key_material(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    shown = " ".join([repr(store), str(store), repr(store.active), str(store.active)])
    for secret in secret_spellings(store.active):
        assert secret not in shown
    assert store.active.kid in repr(store.active)


def test_signing_keys_and_stores_refuse_to_pickle(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(store.active)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(store)


def _open_and_report_kid(path: str) -> str:
    return KeyStore.open(Path(path)).active.kid


def test_concurrent_first_open_creates_one_key(tmp_path: Path) -> None:
    """Several workers starting together on a shared store must all sign with one key."""
    import multiprocessing

    store = tmp_path / "shared-keys"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        kids = pool.map(_open_and_report_kid, [str(store)] * 8)
    assert len(set(kids)) == 1
    assert len(list(store.glob("*.pem"))) == 1


def test_approval_key_is_created_once_0600_and_stable(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys")
    key = store.approval_key()
    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / "keys" / "approval.key").stat().st_mode) == 0o600
    assert KeyStore.open(tmp_path / "keys").approval_key() == key
    assert key.hex() not in repr(store)


def test_an_approval_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys")
    store.approval_key()
    os.chmod(tmp_path / "keys" / "approval.key", 0o644)
    with pytest.raises(KeyStoreError):
        store.approval_key()
