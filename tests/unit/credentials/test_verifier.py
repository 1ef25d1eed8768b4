"""Verifier: the happy path, each check's error class and code, clock edges, rotation, replay."""

from __future__ import annotations

import doctest
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import gatepass.credentials
from gatepass import errors
from gatepass.credentials import (
    PASS_TYP,
    KeyStore,
    PassIssuer,
    PassRequest,
    PassVerifier,
    ReplayCache,
    VerifiedPass,
    load_jwks,
)
from gatepass.credentials._jose import b64url_decode, b64url_encode, canonical_json
from gatepass.credentials.keystore import SigningKey, public_jwk
from gatepass.errors import (
    AudienceMismatchError,
    ClaimInvalidError,
    ClaimMissingError,
    ConfigError,
    CredentialError,
    JwksError,
    KeyUnknownError,
    LifetimeExceededError,
    ReplayCacheFullError,
    ScopeMismatchError,
    SignatureInvalidError,
    TokenExpiredError,
    TokenMalformedError,
    TokenNotYetValidError,
    TokenReplayedError,
    TypeInvalidError,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
ISSUER = "https://gatepass.test"
AUDIENCE = "payments"
TTL = timedelta(minutes=5)
LEEWAY = timedelta(seconds=30)
ACTION = {"action": "pay", "resource": "invoice/42", "amount": Decimal("120"), "currency": "EUR"}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_request(**overrides: Any) -> PassRequest:
    fields: dict[str, Any] = {
        "intent_id": "intent-1",
        "agent_id": "agent-7",
        "audience": AUDIENCE,
        "action": "pay",
        "resource": "invoice/42",
        "amount": Decimal("120.00"),
        "currency": "eur",
        "owner": "alice",
        "delegation_chain": (),
        "policy_version": "policy-v3",
        "issued_at": NOW,
    }
    fields.update(overrides)
    return PassRequest(**fields)


def sign_raw(key: SigningKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    head, body = b64url_encode(canonical_json(header)), b64url_encode(canonical_json(claims))
    signature = key.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url_encode(signature)}"


def sign(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    """A token signed by the real key but with claims of our choosing (an issuer bug, say)."""
    return sign_raw(key, {"alg": "EdDSA", "kid": key.kid, "typ": PASS_TYP, **header}, claims)


@dataclass
class World:
    store: KeyStore
    issuer: PassIssuer
    clock: Clock

    def verifier(self, jwks: dict[str, Any] | None = None, **kwargs: Any) -> PassVerifier:
        kwargs = {"audience": AUDIENCE, "issuer": ISSUER, "now": self.clock, **kwargs}
        return PassVerifier(self.store.jwks(now=NOW) if jwks is None else jwks, **kwargs)

    def token(self, **overrides: Any) -> str:
        return self.issuer.issue(make_request(**overrides)).token

    def claims(self, **changes: Any) -> dict[str, Any]:
        """The claims the issuer would sign, with `changes` applied (None deletes a claim)."""
        claims: dict[str, Any] = json.loads(b64url_decode(self.token().split(".")[1]))
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    return World(store, PassIssuer(store, issuer=ISSUER, ttl=TTL), Clock(T + 1))


def test_happy_path(world: World) -> None:
    verified = world.verifier().verify(world.token(delegation_chain=("a",)), **ACTION)
    assert verified == VerifiedPass(
        claims=verified.claims,
        kid=world.store.active.kid,
        credential_id=verified.claims["jti"],
        agent_id="agent-7",
        intent_id="intent-1",
        owner="alice",
        expires_at=NOW + TTL,
    )
    assert verified.claims["act"] == {"sub": "a"}


def test_amount_and_currency_compare_as_values(world: World) -> None:
    verifier = world.verifier()
    executed = {"action": "pay", "resource": "invoice/42", "amount": Decimal("120.000")}
    verifier.verify(world.token(), **executed, currency="eur")
    no_amount = world.token(intent_id="intent-2", amount=None, currency=None)
    verifier.verify(no_amount, action="pay", resource="invoice/42")


def test_issuer_check_is_optional(world: World) -> None:
    world.verifier(issuer=None).verify(world.token(), **ACTION)


def test_one_member_audience_array_is_accepted(world: World) -> None:
    token = sign(world.store.active, world.claims(aud=[AUDIENCE]))
    world.verifier().verify(token, **ACTION)


@pytest.mark.parametrize(
    "claim", ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "intent_id", "scope", "owner"]
)
def test_each_required_claim_is_required(world: World, claim: str) -> None:
    token = sign(world.store.active, world.claims(**{claim: None}))
    with pytest.raises(ClaimMissingError, match=repr(claim)) as err:
        world.verifier().verify(token, **ACTION)
    assert err.value.code == "claim_missing"


@pytest.mark.parametrize(
    "changes",
    [
        {"iat": str(T)},
        {"iat": True},
        {"nbf": float(T)},
        {"exp": T + 300.5},
        {"exp": -1},
        {"exp": 10**20},
        {"exp": T},  # not after iat
        {"sub": 7},
        {"jti": ""},
        {"owner": ["alice"]},
        {"scope": {"action": "pay"}},
        {"aud": 5},
        {"aud": [AUDIENCE, 5]},
        {"iss": "https://evil.test"},
    ],
)
def test_claims_with_wrong_types_or_values_are_invalid(
    world: World, changes: dict[str, Any]
) -> None:
    token = sign(world.store.active, world.claims(**changes))
    with pytest.raises(ClaimInvalidError) as err:
        world.verifier().verify(token, **ACTION)
    assert err.value.code == "claim_invalid"


@pytest.mark.parametrize(
    ("header", "error", "code"),
    [
        ({"typ": None}, TypeInvalidError, "typ_invalid"),
        ({"typ": "JWT"}, TypeInvalidError, "typ_invalid"),
        ({"typ": PASS_TYP.upper()}, TypeInvalidError, "typ_invalid"),
        ({"kid": None}, KeyUnknownError, "kid_unknown"),
        ({"kid": 42}, KeyUnknownError, "kid_unknown"),
        ({"kid": ""}, KeyUnknownError, "kid_unknown"),
        ({"kid": "x" * 129}, KeyUnknownError, "kid_unknown"),
    ],
)
def test_header_checks(
    world: World, header: dict[str, Any], error: type[CredentialError], code: str
) -> None:
    head = {"alg": "EdDSA", "kid": world.store.active.kid, "typ": PASS_TYP}
    head.update(header)
    head = {k: v for k, v in head.items() if v is not None}
    token = sign_raw(world.store.active, head, world.claims())
    with pytest.raises(error) as err:
        world.verifier().verify(token, **ACTION)
    assert err.value.code == code


EDDSA_HEADER = b64url_encode(b'{"alg":"EdDSA"}')


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJFZERTQSJ9.e30=.AA",  # padding
        "eyJhbGciOiJFZERTQSJ9.e30.A+/A",  # base64, not base64url
        f"{b64url_encode(b'not json')}.e30.",
        f"{b64url_encode(b'[1]')}.e30.",
        f"{b64url_encode(bytes([0xFF, 0xFE]))}.e30.",
        f"{EDDSA_HEADER}.{b64url_encode(b'NaN')}.",
    ],
)
def test_malformed_tokens(world: World, token: str) -> None:
    with pytest.raises(TokenMalformedError) as err:
        world.verifier().verify(token, **ACTION)
    assert err.value.code == "token_malformed"


def test_non_string_token_is_malformed(world: World) -> None:
    with pytest.raises(TokenMalformedError):
        world.verifier().verify(world.token().encode(), **ACTION)  # type: ignore[arg-type]


def test_signature_by_another_key_fails(world: World, tmp_path: Path) -> None:
    other = KeyStore.open(tmp_path / "other", now=NOW).active
    forged = sign(other, world.claims(), kid=world.store.active.kid)
    with pytest.raises(SignatureInvalidError) as err:
        world.verifier().verify(forged, **ACTION)
    assert err.value.code == "signature_invalid"


def test_expiry_edge_with_leeway(world: World) -> None:
    exp = T + 300
    world.clock.t = exp + 29.999  # still inside the 30 s leeway
    world.verifier(leeway=LEEWAY).verify(world.token(), **ACTION)
    world.clock.t = exp + 30
    with pytest.raises(TokenExpiredError) as err:
        world.verifier(leeway=LEEWAY).verify(world.token(), **ACTION)
    assert err.value.code == "expired"
    world.clock.t = exp
    with pytest.raises(TokenExpiredError):
        world.verifier(leeway=timedelta(0)).verify(world.token(), **ACTION)


def test_not_before_edge_with_leeway(world: World) -> None:
    world.clock.t = T - 30  # nbf = T is 30 s ahead: allowed
    world.verifier(leeway=LEEWAY).verify(world.token(), **ACTION)
    world.clock.t = T - 30.001
    with pytest.raises(TokenNotYetValidError) as err:
        world.verifier(leeway=LEEWAY).verify(world.token(), **ACTION)
    assert err.value.code == "not_yet_valid"


def test_iat_in_the_future_is_not_yet_valid(world: World) -> None:
    token = sign(world.store.active, world.claims(nbf=T - 60, iat=T + 120))
    with pytest.raises(TokenNotYetValidError):
        world.verifier().verify(token, **ACTION)


def test_lifetime_is_capped_by_the_verifier(world: World) -> None:
    token = world.token()  # 5 minutes
    with pytest.raises(LifetimeExceededError) as err:
        world.verifier(max_ttl=timedelta(minutes=4)).verify(token, **ACTION)
    assert err.value.code == "ttl_exceeded"
    world.verifier(max_ttl=TTL).verify(token, **ACTION)


@pytest.mark.parametrize("aud", ["crm", [AUDIENCE, "crm"], ["crm"], []])
def test_audience_mismatch(world: World, aud: Any) -> None:
    token = sign(world.store.active, world.claims(aud=aud))
    with pytest.raises(AudienceMismatchError) as err:
        world.verifier().verify(token, **ACTION)
    assert err.value.code == "audience_mismatch"


@pytest.mark.parametrize(
    "executed",
    [
        {**ACTION, "action": "refund"},
        {**ACTION, "resource": "invoice/43"},
        {**ACTION, "amount": Decimal("120.01")},
        {**ACTION, "currency": "USD"},
        {**ACTION, "amount": None},
        {**ACTION, "amount": 120.0},  # a float is never compared, it is refused
        {**ACTION, "amount": Decimal("NaN")},
    ],
)
def test_scope_mismatch(world: World, executed: dict[str, Any]) -> None:
    with pytest.raises(ScopeMismatchError) as err:
        world.verifier().verify(world.token(), **executed)
    assert err.value.code == "scope_mismatch"


def test_a_rejected_pass_does_not_burn_its_jti(world: World) -> None:
    verifier = world.verifier()
    token = world.token()
    with pytest.raises(ScopeMismatchError):
        verifier.verify(token, **{**ACTION, "amount": Decimal("999")})
    verifier.verify(token, **ACTION)
    with pytest.raises(TokenReplayedError) as err:
        verifier.verify(token, **ACTION)
    assert err.value.code == "replayed"


def test_concurrent_presentations_let_exactly_one_through(world: World) -> None:
    verifier = world.verifier()
    token = world.token()
    results: list[str] = []
    barrier = threading.Barrier(8)

    def present() -> None:
        barrier.wait()
        try:
            verifier.verify(token, **ACTION)
            results.append("ok")
        except TokenReplayedError:
            results.append("replayed")

    threads = [threading.Thread(target=present) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["ok"] + ["replayed"] * 7


def test_retired_key_verifies_within_grace_and_not_after(world: World) -> None:
    old_passes = [world.token(intent_id=f"old-{i}") for i in range(2)]
    rotated_at = NOW + timedelta(seconds=10)
    grace = TTL + LEEWAY
    world.store.rotate(now=rotated_at, grace=grace)
    new_pass = world.token(intent_id="new", issued_at=rotated_at)
    world.clock.t = T + 60  # both old passes are still within their own lifetime

    within = world.verifier(world.store.jwks(now=NOW + timedelta(seconds=60)))
    within.verify(old_passes[0], **ACTION)
    within.verify(new_pass, **ACTION)

    world.store.prune(now=rotated_at + grace)
    after = world.verifier(world.store.jwks(now=rotated_at + grace))
    with pytest.raises(KeyUnknownError) as err:
        after.verify(old_passes[1], **ACTION)
    assert err.value.code == "kid_unknown"
    after.verify(new_pass, **ACTION)


def test_replay_cache_survives_a_verifier_swap(world: World) -> None:
    cache = ReplayCache()
    token = world.token()
    world.verifier(replay_cache=cache).verify(token, **ACTION)
    world.store.rotate(now=NOW, grace=TTL + LEEWAY)
    with pytest.raises(TokenReplayedError):
        world.verifier(world.store.jwks(now=NOW), replay_cache=cache).verify(token, **ACTION)


def test_replay_cache_forgets_a_jti_after_its_expiry() -> None:
    cache = ReplayCache()
    assert cache.check_and_store("j1", exp=100, now=50)
    assert not cache.check_and_store("j1", exp=100, now=99.9)
    assert len(cache) == 1
    assert cache.check_and_store("j2", exp=200, now=100)  # purges j1 on the way
    assert len(cache) == 1
    assert cache.check_and_store("j1", exp=300, now=100)


def test_replay_cache_refuses_rather_than_evicting_live_entries() -> None:
    cache = ReplayCache(max_entries=2)
    assert cache.check_and_store("a", exp=100, now=0)
    assert cache.check_and_store("b", exp=200, now=0)
    with pytest.raises(ReplayCacheFullError) as err:
        cache.check_and_store("c", exp=100, now=50)
    assert err.value.code == "replay_cache_full"
    assert not cache.check_and_store("a", exp=100, now=50)  # still remembered
    assert cache.check_and_store("c", exp=300, now=100)  # "a" expired, room again


def test_verifier_remembers_the_jti_for_the_leeway_too(world: World) -> None:
    cache = ReplayCache()
    token = world.token()
    world.verifier(replay_cache=cache).verify(token, **ACTION)
    world.clock.t = T + 300 + 29  # past exp, inside leeway: must still be a replay
    with pytest.raises(TokenReplayedError):
        world.verifier(replay_cache=cache).verify(token, **ACTION)


@pytest.mark.parametrize(
    "jwks",
    [
        {},
        {"keys": "nope"},
        {"keys": ["nope"]},
        [],
    ],
)
def test_structurally_bad_jwks_is_refused(jwks: Any) -> None:
    with pytest.raises(JwksError) as err:
        PassVerifier(jwks, audience=AUDIENCE)
    assert err.value.code == "jwks_invalid"


def test_jwks_entry_checks(world: World) -> None:
    [jwk] = world.store.jwks(now=NOW)["keys"]
    with pytest.raises(JwksError, match="private"):
        PassVerifier({"keys": [{**jwk, "d": "secret"}]}, audience=AUDIENCE)
    with pytest.raises(JwksError, match="twice"):
        PassVerifier({"keys": [jwk, jwk]}, audience=AUDIENCE)
    with pytest.raises(JwksError, match="32 bytes"):
        PassVerifier({"keys": [{**jwk, "x": "AAAA"}]}, audience=AUDIENCE)


@pytest.mark.parametrize(
    "changes",
    [
        {"kty": "EC", "crv": "P-256"},
        {"kty": "RSA"},
        {"crv": "X25519"},  # key agreement, not signatures
        {"use": "enc"},
        {"alg": "ES256"},
    ],
)
def test_a_kid_naming_a_non_ed25519_jwk_is_unknown(world: World, changes: dict[str, str]) -> None:
    [jwk] = world.store.jwks(now=NOW)["keys"]
    verifier = world.verifier({"keys": [{**jwk, **changes}]})
    with pytest.raises(KeyUnknownError, match="not an EdDSA/Ed25519"):
        verifier.verify(world.token(), **ACTION)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"audience": ""}, "pass_audience"),
        ({"issuer": ""}, "pass_issuer"),
        ({"max_ttl": timedelta(0)}, "pass_max_ttl"),
        ({"leeway": timedelta(seconds=-1)}, "pass_leeway"),
        ({"max_token_bytes": 0}, "pass_max_token_bytes"),
    ],
)
def test_bad_verifier_settings_name_their_key(
    world: World, kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        world.verifier(**kwargs)
    assert err.value.key == key


def test_load_jwks_from_the_file_the_store_writes(world: World, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    world.store.write_jwks(path, now=NOW)
    for source in (path, str(path)):
        verifier = world.verifier(load_jwks(source))
        verifier.verify(world.token(intent_id=f"intent-{type(source).__name__}"), **ACTION)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{", "not valid JSON"),
        (b'{"keys": [], "keys": []}', "not valid JSON"),
        (b'{"nokeys": []}', "not a JWKS"),
        (b'{"keys": [' + b'{"kty": "OKP"},' * 70_000 + b"{}]}", "larger than"),
    ],
)
def test_load_jwks_refuses_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    with pytest.raises(JwksError, match=match):
        load_jwks(path)


def test_load_jwks_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="cannot read"):
        load_jwks(tmp_path / "absent.json")


@pytest.fixture
def jwks_server(world: World) -> Iterator[Callable[[str], str]]:
    body = json.dumps(world.store.jwks(now=NOW)).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/jwks.json":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/redirect-insecure":
                self.send_response(302)
                self.send_header("Location", "http://jwks.example.test/jwks.json")
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    server.shutdown()
    server.server_close()


def test_load_jwks_over_loopback_http(world: World, jwks_server: Callable[[str], str]) -> None:
    assert load_jwks(jwks_server("/jwks.json")) == world.store.jwks(now=NOW)
    with pytest.raises(JwksError, match="cannot fetch"):
        load_jwks(jwks_server("/missing"))
    with pytest.raises(JwksError, match="refusing plain http"):
        load_jwks(jwks_server("/redirect-insecure"))


@pytest.mark.parametrize(
    "url",
    ["http://jwks.example.test/jwks.json", "ftp://127.0.0.1/jwks.json", "file:///etc/passwd"],
)
def test_load_jwks_refuses_insecure_urls_before_connecting(url: str) -> None:
    with pytest.raises(JwksError):
        load_jwks(url)


def test_load_jwks_unreachable_host(unused_port: int) -> None:
    with pytest.raises(JwksError, match="cannot fetch"):
        load_jwks(f"http://127.0.0.1:{unused_port}/jwks.json", timeout=2)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_public_api_matches_all() -> None:
    exported = {name for name in dir(gatepass.credentials) if not name.startswith("_")}
    exported -= {"dpop", "issuer", "keystore", "verifier"}  # submodules
    assert exported == set(gatepass.credentials.__all__)
    for name in gatepass.credentials.__all__:
        assert getattr(gatepass.credentials, name) is not None


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(gatepass.credentials, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_every_credential_error_has_its_own_code() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, CredentialError)
    ]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    assert {cls.__name__ for cls in classes} <= set(errors.__all__)


_FUZZ_KEY = SigningKey(Ed25519PrivateKey.generate())
_FUZZ_VERIFIER = PassVerifier(
    {"keys": [public_jwk(_FUZZ_KEY.public_key)]}, audience=AUDIENCE, now=lambda: T + 1
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.text(alphabet="abcAB01-_.", max_size=400))
def test_arbitrary_text_only_ever_raises_credential_errors(token: str) -> None:
    with pytest.raises(CredentialError):
        _FUZZ_VERIFIER.verify(token, **ACTION)


@settings(max_examples=100, deadline=None)
@given(
    header=st.fixed_dictionaries(
        {"alg": st.just("EdDSA"), "kid": st.just(_FUZZ_KEY.kid), "typ": st.just(PASS_TYP)},
        optional={"crit": _JSON, "extra": _JSON},
    ),
    claims=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "owner"]),
        _JSON,
    ),
)
def test_validly_signed_junk_claims_only_ever_raise_credential_errors(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    with pytest.raises(CredentialError):
        _FUZZ_VERIFIER.verify(sign_raw(_FUZZ_KEY, header, claims), **ACTION)


# ---- approved passes ------------------------------------------------------------------------
def test_an_approved_pass_names_its_approver(world: World) -> None:
    from gatepass.credentials import PassApproval

    approval = PassApproval(request_id="req-1", approver="sarah",
                            approved_at=NOW - timedelta(seconds=2))
    verified = world.verifier().verify(world.token(approval=approval), **ACTION)
    assert verified.approver == "sarah"
    assert verified.claims["approval"] == {"request_id": "req-1", "approver": "sarah",
                                           "approved_at": T - 2}


def test_a_pass_without_approval_has_no_approver(world: World) -> None:
    assert world.verifier().verify(world.token(), **ACTION).approver is None


@pytest.mark.parametrize("approval", [
    "sarah", {"approver": "sarah"}, {"request_id": "r", "approver": "", "approved_at": T},
    {"request_id": "r", "approver": "sarah", "approved_at": "yesterday"},
    {"request_id": "r", "approver": "sarah", "approved_at": T + 3600},  # after issuance
    {"request_id": "r", "approver": "sarah", "approved_at": T, "extra": 1},
])
def test_a_malformed_approval_claim_is_refused(world: World, approval: Any) -> None:
    token = sign(world.store.active, world.claims(approval=approval))
    with pytest.raises(ClaimInvalidError):
        world.verifier().verify(token, **ACTION)
