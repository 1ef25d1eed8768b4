"""Identity connectors: Okta Event Hooks, a SCIM 2.0 service provider and Microsoft Graph
change notifications, mapped to lifecycle events on the identity topic.

    settings = ConnectorSettings.load()            # GATEPASS_CONNECTOR_* and/or a TOML file
    receiver = Receiver(settings, LifecyclePublisher(...), scim_store=KafkaScimStore(s))
    await receiver.start()

See docs/connectors.md for the URLs, headers, keys and mappings.
"""

from gatepass.connectors.base import Connector, ConnectorContext, LifecycleSink, Publisher
from gatepass.connectors.config import (
    ConnectorSettings,
    EntraSettings,
    OktaSettings,
    ScimSettings,
)
from gatepass.connectors.entra import EntraConnector, GraphClient, GraphUser, HttpGraphClient
from gatepass.connectors.okta import OktaConnector
from gatepass.connectors.receiver import Receiver, run_receiver, serve_in_background
from gatepass.connectors.scim import KafkaScimStore, MemoryScimStore, ScimConnector, ScimStore

__all__ = [
    "Connector",
    "ConnectorContext",
    "ConnectorSettings",
    "EntraConnector",
    "EntraSettings",
    "GraphClient",
    "GraphUser",
    "HttpGraphClient",
    "KafkaScimStore",
    "LifecycleSink",
    "MemoryScimStore",
    "OktaConnector",
    "OktaSettings",
    "Publisher",
    "Receiver",
    "ScimConnector",
    "ScimSettings",
    "ScimStore",
    "run_receiver",
    "serve_in_background",
]
