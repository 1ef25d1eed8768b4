"""Ed25519 signing keys for passes: kept on disk, rotated with a grace period, published as a JWKS.

Layout of a store directory (created 0700):

    keys.json   metadata, one entry per key: kid, created_at, retired_at, publish_until (0600)
    <kid>.pem   one unencrypted PKCS8 PEM private key per key (0600, created with O_EXCL)
    approval.key the approval key: 32 random bytes, hex (0600, created with O_EXCL on first use)

The kid is the key's RFC 7638 thumbprint, so the file name is derived from the key itself
and never from input. Exactly one key is active (signs); retired keys stay in the JWKS until
`publish_until` (retired_at + the grace given to `rotate`) so passes they signed still
verify, then `prune` forgets them and deletes their files. One process owns a store
(the issuer); verifiers only ever see the public JWKS.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gatepass.credentials._jose import (
    KID_PATTERN,
    b64url_encode,
    canonical_json,
    ed25519_thumbprint,
    loads_strict,
    require_aware,
)
from gatepass.errors import ConfigError, KeyStoreError, KeyUnknownError

__all__ = ["METADATA_FILE", "KeyStore", "SigningKey", "public_jwk"]

METADATA_FILE = "keys.json"
_METADATA_VERSION = 1
_MAX_KEY_FILE_BYTES = 64 * 1024


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 key, with its thumbprint as kid; never a private member."""
    x = _raw_public(key)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(x),
        "kid": ed25519_thumbprint(x),
        "use": "sig",
        "alg": "EdDSA",
    }


class SigningKey:
    """The active signing key: its kid and the private key. Prints and pickles without secrets."""

    __slots__ = ("_private_key", "kid", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.kid = ed25519_thumbprint(_raw_public(self.public_key))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._private_key

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    def __reduce__(self) -> NoReturn:
        # A private key must never leave the process by accident (pickled into a queue, a cache...).
        raise TypeError("SigningKey holds a private key and cannot be pickled")


@dataclass(frozen=True)
class _KeyRecord:
    kid: str
    created_at: datetime
    retired_at: datetime | None
    publish_until: datetime | None
    public_key: Ed25519PublicKey

    def published(self, now: datetime) -> bool:
        return self.publish_until is None or now < self.publish_until

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.astimezone(UTC).isoformat()

        return {
            "kid": self.kid,
            "created_at": iso(self.created_at),
            "retired_at": iso(self.retired_at),
            "publish_until": iso(self.publish_until),
        }


LOCK_FILE = ".lock"
APPROVAL_KEY_FILE = "approval.key"


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    fd = os.open(lock_file, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class KeyStore:
    """A directory of Ed25519 signing keys. Build it with `KeyStore.open`."""

    def __init__(self, path: Path, records: tuple[_KeyRecord, ...], active: SigningKey) -> None:
        self._path = path
        self._records = records  # replaced wholesale, so readers always see a consistent tuple
        self._active = active
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, create: bool = True, now: datetime | None = None) -> KeyStore:
        """Load the store at `path`; with `create`, make the directory and a first key if absent."""
        now = require_aware(now or datetime.now(UTC), "now")
        path = Path(path)
        meta_path = path / METADATA_FILE
        try:
            if not path.exists():
                if not create:
                    raise KeyStoreError(f"{path}: no key store there")
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(path, 0o700)  # mkdir's mode is narrowed by the umask, never widened
            elif not path.is_dir():
                raise KeyStoreError(f"{path}: not a directory")
            elif path.stat().st_mode & 0o022:
                raise KeyStoreError(f"{path}: directory is group/other-writable; chmod 700")
            # Workers sharing one store (several processes, a shared volume) must not each
            # create a first key: whoever takes the lock creates it, the others load it.
            with _exclusive(path / LOCK_FILE):
                if not meta_path.exists():
                    if not create:
                        raise KeyStoreError(f"{meta_path}: missing")
                    key = Ed25519PrivateKey.generate()
                    active = SigningKey(key)
                    _write_private_key(path / f"{active.kid}.pem", key)
                    record = _KeyRecord(active.kid, now, None, None, active.public_key)
                    _atomic_write(meta_path, _metadata_bytes((record,)), 0o600)
                    return cls(path, (record,), active)
                return cls._load(path, meta_path)
        except OSError as exc:
            raise KeyStoreError(f"{path}: {exc.strerror or exc}") from exc

    @classmethod
    def _load(cls, path: Path, meta_path: Path) -> KeyStore:
        try:
            entries = _parse_metadata(loads_strict(meta_path.read_bytes()))
        except ValueError as exc:
            raise KeyStoreError(f"{meta_path}: corrupt metadata ({exc})") from exc
        records: list[_KeyRecord] = []
        active: SigningKey | None = None
        for kid, created_at, retired_at, publish_until in entries:
            key_file = path / f"{kid}.pem"
            key = SigningKey(_read_private_key(key_file))
            if key.kid != kid:
                raise KeyStoreError(f"{key_file}: holds a different key than its name says")
            if retired_at is None:
                active = key  # retired keys' private halves are not kept in memory
            records.append(_KeyRecord(kid, created_at, retired_at, publish_until, key.public_key))
        assert active is not None  # _parse_metadata guarantees exactly one active entry
        return cls(path, tuple(records), active)

    @property
    def path(self) -> Path:
        return self._path

    def approval_key(self) -> bytes:
        """The deployment's approval key (32 random bytes, `approval.key`, 0600), created on
        first use under the store's lock. Approval codes are HMACs under it
        (gatepass.core.approval): whoever holds it can approve in anyone's name, so it gets
        the care of a signing key and never leaves this object except to compute codes."""
        key_file = self._path / APPROVAL_KEY_FILE
        try:
            with _exclusive(self._path / LOCK_FILE):
                if not key_file.exists():
                    fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                                 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(secrets.token_bytes(32).hex().encode())
                        f.flush()
                        os.fsync(f.fileno())
                    _fsync_dir(self._path)
                with os.fdopen(os.open(key_file, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                    st = os.fstat(f.fileno())
                    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                        raise KeyStoreError(f"{key_file}: must be a regular file of mode 0600")
                    raw = f.read(200)
        except OSError as exc:
            raise KeyStoreError(f"{key_file}: {exc.strerror or exc}") from exc
        try:
            key = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise KeyStoreError(f"{key_file}: not a hex-encoded key") from None
        if len(key) < 32:
            raise KeyStoreError(f"{key_file}: key shorter than 32 bytes")
        return key

    @property
    def active_since(self) -> datetime:
        """When the active key was created (for key-age monitoring)."""
        return next(r.created_at for r in self._records if r.retired_at is None)

    @property
    def active(self) -> SigningKey:
        """The key that signs new passes."""
        return self._active

    def rotate(self, *, now: datetime, grace: timedelta) -> str:
        """Make a new active key and return its kid; the old one stays published for `grace`.

        Pass grace = the longest pass lifetime + the verifiers' leeway, so every pass the old
        key signed expires before its public key leaves the JWKS.
        """
        now = require_aware(now, "now")
        if grace < timedelta(0):
            raise ConfigError("key_rotation_grace", "must not be negative")
        with self._lock:
            self._prune(now)
            key = Ed25519PrivateKey.generate()
            active = SigningKey(key)
            records = (
                *(
                    replace(r, retired_at=now, publish_until=now + grace)
                    if r.retired_at is None
                    else r
                    for r in self._records
                ),
                _KeyRecord(active.kid, now, None, None, active.public_key),
            )
            try:
                # Key file first, metadata second: a crash in between leaves an unused file,
                # never metadata naming a key that is not there.
                _write_private_key(self._path / f"{active.kid}.pem", key)
                _atomic_write(self._path / METADATA_FILE, _metadata_bytes(records), 0o600)
            except OSError as exc:
                reason = exc.strerror or exc
                raise KeyStoreError(f"{self._path}: rotation failed: {reason}") from exc
            self._records, self._active = records, active
            return active.kid

    def prune(self, *, now: datetime) -> list[str]:
        """Forget retired keys whose grace has passed and delete their files; return their kids."""
        now = require_aware(now, "now")
        with self._lock:
            return self._prune(now)

    def _prune(self, now: datetime) -> list[str]:
        keep = tuple(r for r in self._records if r.published(now))
        gone = [r.kid for r in self._records if not r.published(now)]
        if not gone:
            return []
        try:
            _atomic_write(self._path / METADATA_FILE, _metadata_bytes(keep), 0o600)
            self._records = keep
            for kid in gone:
                (self._path / f"{kid}.pem").unlink(missing_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"{self._path}: pruning failed: {exc.strerror or exc}") from exc
        return gone

    def jwks(self, *, now: datetime) -> dict[str, list[dict[str, str]]]:
        """The public key set at `now`: the active key first, then retired keys still in grace."""
        now = require_aware(now, "now")
        records = self._records
        active = [r for r in records if r.retired_at is None]
        retired = [r for r in reversed(records) if r.retired_at is not None and r.published(now)]
        return {"keys": [public_jwk(r.public_key) for r in active + retired]}

    def write_jwks(self, path: Path, *, now: datetime) -> None:
        """Atomically write `jwks(now=now)` as JSON to `path` (0644: it is public)."""
        data = canonical_json(self.jwks(now=now)) + b"\n"
        try:
            _atomic_write(Path(path), data, 0o644)
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot write JWKS: {exc.strerror or exc}") from exc

    def public_key(self, kid: str) -> Ed25519PublicKey:
        """The public key with this kid (active or retired, until pruned)."""
        for record in self._records:
            if record.kid == kid:
                return record.public_key
        raise KeyUnknownError(f"no key with kid {kid!r} in this store")

    def __repr__(self) -> str:
        return (
            f"KeyStore(path={str(self._path)!r}, active_kid={self._active.kid!r}, "
            f"keys={len(self._records)})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("KeyStore holds a private key and cannot be pickled")


def _parse_metadata(
    raw: Any,
) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
    if not isinstance(raw, dict) or raw.get("version") != _METADATA_VERSION:
        raise ValueError(f"expected an object with version {_METADATA_VERSION}")
    keys = raw.get("keys")
    if not isinstance(keys, list):
        raise ValueError("'keys' must be a list")

    def when(entry: dict[str, Any], name: str, *, optional: bool) -> datetime | None:
        value = entry.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{name} must be an ISO 8601 string")
        return require_aware(datetime.fromisoformat(value), name)

    entries = []
    for entry in keys:
        if not isinstance(entry, dict):
            raise ValueError("each key entry must be an object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise ValueError("bad kid")
        created_at = when(entry, "created_at", optional=False)
        retired_at = when(entry, "retired_at", optional=True)
        publish_until = when(entry, "publish_until", optional=True)
        if (retired_at is None) != (publish_until is None):
            raise ValueError(f"{kid}: retired_at and publish_until must be set together")
        assert created_at is not None
        entries.append((kid, created_at, retired_at, publish_until))
    if len({e[0] for e in entries}) != len(entries):
        raise ValueError("duplicate kid")
    if sum(1 for e in entries if e[2] is None) != 1:
        raise ValueError("there must be exactly one active key")
    return entries


def _metadata_bytes(records: tuple[_KeyRecord, ...]) -> bytes:
    doc = {"version": _METADATA_VERSION, "keys": [r.to_json() for r in records]}
    return canonical_json(doc) + b"\n"


def _read_private_key(key_file: Path) -> Ed25519PrivateKey:
    # O_NOFOLLOW + fstat on the opened file: the mode we check is the mode of what we read.
    with os.fdopen(os.open(key_file, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"{key_file}: not a regular file")
        if st.st_mode & 0o077:
            raise KeyStoreError(
                f"{key_file}: mode {stat.S_IMODE(st.st_mode):04o} grants group/other access; "
                "refusing to load it (chmod 600)"
            )
        data = f.read(_MAX_KEY_FILE_BYTES + 1)
    try:
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise ValueError("too large")
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # `from None`: whatever the parser says must not drag key bytes into a traceback.
        raise KeyStoreError(f"{key_file}: not an unencrypted PKCS8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{key_file}: not an Ed25519 key")
    return key


def _write_private_key(key_file: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 in the open call itself: no moment where the file is readable by others.
    fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write to a fresh temp file in the same directory, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exact mode whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not every platform/filesystem lets you fsync a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
