"""SCIM compliance of the Users endpoint, checked by scim2-tester (python-scim) over HTTP.

scim2-tester reads /ServiceProviderConfig, /ResourceTypes and /Schemas, builds the User
model from what they publish, then creates, reads (by id, listed, with attributes and
excludedAttributes, via /.search), replaces, deletes and PATCHes (add, replace, remove) every
published attribute. Every check must succeed; the summary is printed (`pytest -s`).
"""

from __future__ import annotations

from collections import Counter

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from gatepass.connectors import serve_in_background
from gatepass.core import PrincipalStatus
from unit.connectors.support import SCIM_TOKEN, RecordingPublisher, receiver


def test_scim2_tester_finds_no_error_in_the_users_endpoint() -> None:
    pub = RecordingPublisher()
    with serve_in_background(receiver(pub)) as url, \
            Client(base_url=f"{url}/scim/v2",
                   headers={"Authorization": f"Bearer {SCIM_TOKEN}"}) as http:
        results = check_server(SyncSCIMClient(http), resource_types=["User"])

    by_title: Counter[tuple[str, str]] = Counter(
        (r.title or "?", r.status.name) for r in results)
    print("\nscim2-tester checks (title, status: count):")
    for (title, status), count in sorted(by_title.items()):
        print(f"  {title:45} {status:8} {count}")
    failed = [r for r in results if r.status in {Status.ERROR, Status.CRITICAL}]
    assert not failed, "\n".join(f"{r.title}: {r.reason}" for r in failed)
    titles = {r.title for r in results}
    for expected in ("service_provider_config_endpoint", "query_all_resource_types",
                     "query_all_schemas", "random_url", "object_creation", "object_query",
                     "object_query_without_id", "object_query_with_attributes",
                     "object_list_with_attributes", "search_with_attributes",
                     "object_replacement", "object_deletion", "check_add_attribute",
                     "check_replace_attribute", "check_remove_attribute"):
        assert expected in titles, f"scim2-tester did not run {expected}"
    assert not [r for r in results if r.status is Status.SKIPPED]
    # Each user it created was published as a lifecycle event; deletions as offboarded.
    assert {s for _, s in pub.statuses()} == {
        PrincipalStatus.ACTIVE, PrincipalStatus.SUSPENDED, PrincipalStatus.OFFBOARDED}
