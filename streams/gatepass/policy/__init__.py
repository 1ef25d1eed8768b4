"""Policy bundles outside the pure core: folders, the policy topic, cases and replay."""

from gatepass.policy.bundle import DEFAULT_POLICY_DIR, load_policy, read_bundle

__all__ = ["DEFAULT_POLICY_DIR", "load_policy", "read_bundle"]
