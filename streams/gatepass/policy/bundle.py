"""Policy bundles on disk: read a folder into files, load it into a CedarPolicy.

The worker starts with the bundle of `GATEPASS_POLICY_DIR` (default: the repository's
`policies/` folder); `gatepass policy push` replaces it on every worker at once through the
policy topic (gatepass.policy.topic).
"""

from __future__ import annotations

import os
from pathlib import Path

from gatepass.core.policy import CedarPolicy
from gatepass.errors import PolicyError

__all__ = ["DEFAULT_POLICY_DIR", "load_policy", "read_bundle"]

# streams/gatepass/policy/bundle.py -> the repository root's policies/
DEFAULT_POLICY_DIR = Path(__file__).resolve().parents[3] / "policies"
_SUFFIXES = (".cedar", ".cedarschema", ".toml")


def read_bundle(directory: Path) -> dict[str, str]:
    """Every bundle file under `directory` (relative POSIX path -> UTF-8 text).

    Hidden files and editor leftovers are skipped; anything else with a policy suffix is
    read, and `CedarPolicy.from_files` refuses what does not belong.
    """
    if not directory.is_dir():
        raise PolicyError("not a folder (a policy bundle is a folder: schema.cedarschema, "
                          "scope/, approval/, gatepass.toml)", file=str(directory))
    files: dict[str, str] = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(_SUFFIXES):
                continue
            path = Path(root) / name
            rel = path.relative_to(directory).as_posix()
            try:
                files[rel] = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyError("not UTF-8 text", file=rel) from None
            except OSError as exc:
                raise PolicyError(f"cannot read: {exc.strerror}", file=rel) from None
    return files


def load_policy(directory: Path | None = None) -> CedarPolicy:
    """Read and validate a bundle folder (default: DEFAULT_POLICY_DIR)."""
    return CedarPolicy.from_files(read_bundle(directory or DEFAULT_POLICY_DIR))
