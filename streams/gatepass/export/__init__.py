"""SIEM export: denials and orphan alerts as OCSF events in CloudEvents envelopes.

This package's API is the pure mapping (`gatepass.export.ocsf`); reading the topics and
writing the export topic live in `gatepass.export.reader`, which needs a broker.
"""

from gatepass.export.ocsf import (
    API_ACTIVITY_CLASS_UID,
    DENIAL_EVENT_TYPE,
    DETECTION_FINDING_CLASS_UID,
    OCSF_VERSION,
    ORPHAN_ALERT_EVENT_TYPE,
    PRODUCT_VERSION,
    denial_to_ocsf,
    orphan_to_ocsf,
    to_cloudevent,
)

__all__ = [
    "API_ACTIVITY_CLASS_UID",
    "DENIAL_EVENT_TYPE",
    "DETECTION_FINDING_CLASS_UID",
    "OCSF_VERSION",
    "ORPHAN_ALERT_EVENT_TYPE",
    "PRODUCT_VERSION",
    "denial_to_ocsf",
    "orphan_to_ocsf",
    "to_cloudevent",
]
