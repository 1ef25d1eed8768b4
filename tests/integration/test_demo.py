"""The README's main command plays its whole story on a real broker and says it went right."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatepass.demo.scenario import run_demo
from support.stack import new_settings

pytestmark = pytest.mark.integration


def test_the_demo_story_behaves_as_told(kafka_bootstrap: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path)
    assert run_demo(settings) == 0
    out = capsys.readouterr().out
    for line in [
        "ALLOW [allowed]",
        "Cedar policies: procurement.orders",
        "HTTP 401 replayed",
        "DENY [out_of_scope]",
        "PENDING [pending_approval]",
        "Cedar policies: procurement.orders, approval.large-order",
        "the secret left the address bar",
        "Approved: purchase_order.create",
        "ALLOW [approved]",
        "the pass names the approver: sarah",
        "ORPHAN ALERT procure-bot",
        "DENY [owner_inactive]",
        "refused [approver_inactive]",
        "Every step behaved as expected.",
    ]:
        assert line in out, f"missing {line!r} in the demo's output:\n{out}"
    # the printed link carried the secret; the address after opening it does not
    link = next(line.strip() for line in out.splitlines() if "code=" in line)
    assert "/approvals/procure-bot/" in link
