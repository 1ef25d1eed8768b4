"""Importers: identity exports mapped to lifecycle events, then published (issue #5).

Each source has a pure mapping (a parsed export and the export's time in; an `ImportBatch`
of lifecycle events out, or one RecordInvalidError naming every bad row and field, so a file
is imported whole or not at all) and shares one publish step that skips what the identity
topic holds already. `gatepass import ...` (cli/imports.py) wires them; docs/importers.md
describes the formats.
"""

from gatepass.importers.base import ImportBatch, RowProblem, rows_invalid
from gatepass.importers.entra import EntraConfig, map_entra_agents
from gatepass.importers.hr import HrConfig, map_hr_rows, parse_hr_file
from gatepass.importers.publish import PublishSummary, held_identity, publish_batch
from gatepass.importers.servicenow import ServiceNowConfig, map_servicenow_cis

__all__ = [
    "EntraConfig",
    "HrConfig",
    "ImportBatch",
    "PublishSummary",
    "RowProblem",
    "ServiceNowConfig",
    "held_identity",
    "map_entra_agents",
    "map_hr_rows",
    "map_servicenow_cis",
    "parse_hr_file",
    "publish_batch",
    "rows_invalid",
]
