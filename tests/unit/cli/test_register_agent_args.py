"""`gatepass register-agent --public-key=X` for keys that start with '-' (1 in 64 do)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.cli.main import build_parser
from gatepass.sdk import agent_public_key


def test_a_public_key_starting_with_a_dash_parses_in_the_equals_form() -> None:
    while True:  # find a key whose base64url starts with '-'
        x = agent_public_key(Ed25519PrivateKey.generate())
        if x.startswith("-"):
            break
    ns = build_parser().parse_args(["register-agent", "bot", "--owner", "o", "--purpose", "p",
                                    f"--public-key={x}"])
    assert ns.public_key == x
