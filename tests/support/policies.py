"""Build small Cedar policy bundles from inline text for the core's unit tests.

The entity and context shape copies policies/schema.cedarschema (namespace Gatepass: Agent in
Department, Principal, Resource, the Request context) so a test bundle sees exactly what the
worker sends; only the declared actions differ, to cover what the tests need.
"""

from __future__ import annotations

from gatepass.core.policy import CedarPolicy

__all__ = ["TEST_ACTIONS", "TEST_SCHEMA", "bundle", "bundle_files", "schema_with"]

# Every action a core test names. Anything else (e.g. "rocket.launch") is undeclared on
# purpose: an undeclared action is never evaluated and always out of scope.
TEST_ACTIONS = ("purchase_order.create", "vendor.read", "invoice.read", "dataset.read",
                "payment.send", "customer.read", "cloud.provision", "cloud.read",
                "ticket.update")

_ENTITIES = """\
namespace Gatepass {
  entity Principal = {
    status: String,
  };

  entity Department;

  entity Agent in [Department] = {
    purpose: String,
    status: String,
    signed: Bool,
    owner?: Principal,
    department?: String,
  };

  entity Resource;

  type Request = {
    amount?: decimal,
    currency?: String,
    resource: String,
    audience: String,
    delegated: Bool,
    delegation_depth: Long,
  };

%s
}
"""


def schema_with(actions: tuple[str, ...] = TEST_ACTIONS) -> str:
    """The Gatepass schema declaring `actions` (each on its own line, for line numbers)."""
    names = ",\n         ".join(f'"{a}"' for a in actions)
    return _ENTITIES % (f"  action {names}\n"
                        "    appliesTo { principal: Agent, resource: Resource, "
                        "context: Request };")


TEST_SCHEMA = schema_with()


def bundle_files(scope: str, approval: str = "", settings: str = "",
                 schema: str = TEST_SCHEMA) -> dict[str, str]:
    """The files of a bundle: schema.cedarschema, scope/test.cedar, and approval/test.cedar
    and gatepass.toml when given (change the dict to test other file layouts)."""
    files = {"schema.cedarschema": schema, "scope/test.cedar": scope}
    if approval:
        files["approval/test.cedar"] = approval
    if settings:
        files["gatepass.toml"] = settings
    return files


def bundle(scope: str, approval: str = "", settings: str = "",
           schema: str = TEST_SCHEMA) -> CedarPolicy:
    """A validated CedarPolicy from inline text (PolicyError if Gatepass would refuse it)."""
    return CedarPolicy.from_files(bundle_files(scope, approval, settings, schema))
