"""The benchmark runs end to end: every section once with tiny counts, on the test broker.

    python -m benchmarks.run --smoke --bootstrap <broker> --out <tmp>

Asserts only that it finished and wrote a well-formed results file and a plot; no figure
is judged (the full run is `make bench`, see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("verifier", "pipeline_alone", "gatepass_setup", "revoke", "orphans", "recovery")
THROUGHPUT = ("gatepass_1_worker", "gatepass_2_workers", "echo", "raw")
LATENCY = ("gatepass_sustained", "gatepass_offered", "echo_sustained", "echo_offered",
           "raw_sustained", "raw_offered")
TARGETS = ("throughput_one_worker", "throughput_two_workers", "latency_p99_at_1000",
           "latency_p99_9_at_1000", "revoke_p99", "orphans_1000_within_1s", "verifier_per_core",
           "ready_1m_identities", "memory_per_identity")


@pytest.fixture(scope="module")
def smoke(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--bootstrap", kafka_bootstrap,
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=280)
    results = out / "latest.json"
    if not results.exists():  # a failed section: the errors are in latest-failed.json
        results = out / "latest-failed.json"
    assert results.exists(), f"no results file\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(results.read_text())
    return {"proc": proc, "data": data, "out": out}


def test_the_run_finished_without_a_failed_section(smoke: dict) -> None:
    proc, data = smoke["proc"], smoke["data"]
    assert data["errors"] == {}, json.dumps(data["errors"], indent=1)[:4000]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Gatepass / baseline" in proc.stdout  # the summary table was printed


def test_the_results_are_well_formed(smoke: dict) -> None:
    data = smoke["data"]
    assert data["schema"] == "gatepass-bench/1"
    assert data["profile"]["name"] == "smoke"
    for key in ("cpu_model", "cores", "kafka", "python"):
        assert data["machine"][key], key
    for key in SECTIONS:
        assert isinstance(data[key], dict), key
    for key in THROUGHPUT:
        figures = data["throughput"][key]
        assert figures["answered"] > 0 and figures["per_s"] > 0, key
        assert set(figures["latency_in_loop"]) >= {"p50_ms", "p99_ms", "p99_9_ms", "max_ms"}
    for key in LATENCY:
        figures = data["latency"][key]
        assert figures["sent"] > 0 and figures["answered"] == figures["sent"], key
        assert figures["latency"]["count"] > 0, key
        assert figures["backlog_samples"], key
    assert data["revoke"]["revoke"]["count"] == data["revoke"]["repeats"] > 0
    assert data["revoke"]["revoke_from_acknowledgement"]["count"] == data["revoke"]["repeats"]
    assert data["revoke"]["revoke_from_acknowledgement"]["p50_ms"] <= \
        data["revoke"]["revoke"]["p50_ms"]
    assert data["orphans"]["complete"] is True
    assert data["recovery"]["identities_held"] >= data["recovery"]["identities_written"]
    assert set(data["targets"]) == set(TARGETS)
    for target in data["targets"].values():
        assert target["met"] in (True, False, None)
    assert data["latency_cdf"] and all(data["latency_cdf"].values())


def test_the_mix_is_the_documented_one(smoke: dict) -> None:
    outcomes = smoke["data"]["pipeline_alone"]["outcomes"]
    total = sum(outcomes.values())
    assert outcomes["ALLOW/allowed"] / total == pytest.approx(0.8, abs=0.01)
    assert {"DENY/out_of_scope", "DENY/owner_inactive", "DENY/agent_inactive",
            "DENY/unregistered_agent", "DENY/stale_intent"} <= set(outcomes)


def test_a_plot_was_drawn(smoke: dict) -> None:
    png = smoke["out"] / "latest.png"
    assert png.exists(), "no plot (or only latest-failed.png: a section failed)"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
