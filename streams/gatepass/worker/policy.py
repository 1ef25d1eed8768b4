"""Loads the scope policy file at start-up (the default ships with the package)."""

from __future__ import annotations

from pathlib import Path

from gatepass.core import ScopePolicy
from gatepass.errors import ConfigError

__all__ = ["DEFAULT_SCOPE_FILE", "load_scope_policy"]

DEFAULT_SCOPE_FILE = Path(__file__).resolve().parent.parent / "policy" / "scopes.toml"


def load_scope_policy(path: Path | None) -> ScopePolicy:
    path = path or DEFAULT_SCOPE_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("scope_file", f"cannot read {path}: {exc.strerror}") from exc
    return ScopePolicy.from_toml(text, source=str(path))
