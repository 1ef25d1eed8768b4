"""The fault suite's oracle itself (pure, no broker): what it counts as lost, contradicting,
late and repeated, so a clean fault run means what it says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .harness import Agent, Offboarding, SeenVerdict, reconcile

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
AGENTS = [Agent("a1", "o1"), Agent("a2", "o2")]
OFFBOARDED = {"o1": Offboarding("o1", T0, T0)}


def allow(at: datetime, cred: str = "c1") -> SeenVerdict:
    return SeenVerdict("ALLOW", cred, ("allowed",), at)


def alert(agent: str, detected: datetime, alert_id: str = "x") -> dict[str, object]:
    return {"agent_id": agent, "owner": "o1", "owner_status": "offboarded",
            "owner_status_at": T0, "alert_id": alert_id, "detected_at": detected}


def run(verdicts: dict[str, list[SeenVerdict]], alerts: list[dict[str, object]],
        acked: set[str] | None = None):
    agent_of = {"i1": "a1", "i2": "a2", "i3": "a2"}
    return reconcile(acked=acked if acked is not None else set(verdicts), agent_of=agent_of,
                     verdicts=verdicts, audit=[], alerts=alerts, agents=AGENTS,
                     offboarded=OFFBOARDED, bound_s=5.0)


def test_a_clean_run_is_clean() -> None:
    r = run({"i1": [SeenVerdict("DENY", None, ("owner_inactive",), T0)], "i2": [allow(T0)]},
            [alert("a1", T0)])
    assert (r.lost, r.contradicting, r.late_allows, r.repeated_alerts) == ([], {}, [], {})
    assert r.unalerted_agents == [] and r.alert_copies == 0


def test_an_acknowledged_intent_without_a_verdict_is_lost() -> None:
    r = run({"i2": [allow(T0)]}, [alert("a1", T0)], acked={"i1", "i2"})
    assert r.lost == ["i1"]


def test_a_repeated_verdict_is_a_duplicate_a_different_one_contradicts() -> None:
    r = run({"i2": [allow(T0), allow(T0)], "i3": [allow(T0), allow(T0, cred="c2")]},
            [alert("a1", T0)])
    assert r.duplicates == 1 and list(r.contradicting) == ["i3"]


def test_an_allow_after_the_offboarding_and_bound_is_late() -> None:
    r = run({"i1": [allow(T0 + timedelta(seconds=6))]}, [alert("a1", T0)])
    assert r.late_allows == ["i1"]


def test_a_byte_identical_alert_copy_is_not_a_second_alert() -> None:
    # A write resent after a broker error may land twice: same alert id, same detection time.
    r = run({"i1": []}, [alert("a1", T0), alert("a1", T0)], acked=set())
    assert r.repeated_alerts == {} and r.alert_copies == 1


def test_an_agent_alerted_twice_for_one_offboarding_is_repeated() -> None:
    r = run({"i1": []}, [alert("a1", T0), alert("a1", T0 + timedelta(milliseconds=5))],
            acked=set())
    assert r.repeated_alerts == {("a1", "o1", T0): 2}


def test_an_agent_of_an_offboarded_owner_without_an_alert_is_reported() -> None:
    r = run({"i2": [allow(T0)]}, [])
    assert r.unalerted_agents == ["a1"]
