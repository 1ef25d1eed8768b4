"""The issue's targets judged against a run's figures (recorded, never asserted), the summary
table printed at the end, and the plot (latency CDFs, throughput bars).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    identities = _get(results, "recovery", "identities_written") or 0
    orphans = _get(results, "orphans", "agents") or 0
    rate = _get(results, "latency", "gatepass_offered", "offered_per_s")

    def at_most(v: Any, bound: float) -> bool | None:
        return None if v is None else bool(v <= bound)

    def at_least(v: Any, bound: float) -> bool | None:
        return None if v is None else bool(v >= bound)

    rows: list[tuple[str, str, Any, str, Callable[[Any], bool | None], str | None]] = [
        ("throughput_one_worker", "decisions/s, one worker",
         _get(results, "throughput", "gatepass_1_worker", "per_s"), ">= 5000",
         lambda v: at_least(v, 5000), None),
        ("throughput_two_workers", "decisions/s, two workers",
         _get(results, "throughput", "gatepass_2_workers", "per_s"), ">= 10000",
         lambda v: at_least(v, 10000), None),
        ("latency_p99_at_1000", f"p99 ms at {rate}/s offered",
         _get(results, "latency", "gatepass_offered", "latency", "p99_ms"), "<= 10",
         lambda v: at_most(v, 10), None if rate == 1000 else "offered rate is not 1,000/s"),
        ("latency_p99_9_at_1000", f"p99.9 ms at {rate}/s offered",
         _get(results, "latency", "gatepass_offered", "latency", "p99_9_ms"), "<= 50",
         lambda v: at_most(v, 50), None if rate == 1000 else "offered rate is not 1,000/s"),
        ("revoke_p99", "revoke p99 ms", _get(results, "revoke", "revoke", "p99_ms"),
         "<= 100", lambda v: at_most(v, 100), None),
        ("orphans_1000_within_1s", f"last of {orphans} orphan alerts, ms",
         _get(results, "orphans", "last_ms"), "<= 1000 (1,000 agents)",
         lambda v: at_most(v, 1000) if _get(results, "orphans", "complete") else False,
         None if orphans >= 1000 else f"only {orphans} agents in this profile"),
        ("verifier_per_core", "verifications/s per core (CPU)",
         _get(results, "verifier", "per_s_cpu"), ">= 5000", lambda v: at_least(v, 5000), None),
        ("ready_1m_identities", f"ready s with {identities:,} identities",
         _get(results, "recovery", "ready_seconds"), "<= 30 (1,000,000)",
         lambda v: at_most(v, 30),
         None if identities >= 1_000_000 else f"only {identities:,} identities in this profile"),
        ("memory_per_identity", "bytes per identity (RSS)",
         _get(results, "recovery", "bytes_per_identity"), "<= 1024",
         lambda v: at_most(v, 1024), None),
    ]
    out: dict[str, dict[str, Any]] = {}
    for key, label, value, target, judge, caveat in rows:
        met = judge(value)
        out[key] = {"figure": label, "value": value, "target": target,
                    "met": None if caveat else met,
                    **({"note": caveat, "met_at_this_scale": met} if caveat else {})}
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) < 1:
            return f"{v:.3g}"
        return f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def summary_table(results: dict[str, Any]) -> str:
    thr = results.get("throughput", {})
    lat = results.get("latency", {})
    lines = ["", f"Gatepass benchmark ({results.get('profile', {}).get('name')} profile) on "
             f"{results['machine']['cpu_model']}, {results['machine']['cores']} cores, "
             f"Kafka {results['machine']['kafka']}, Python {results['machine']['python']}", ""]
    rows: list[tuple[str, ...]] = [("figure", "value", "target", "met")]
    for t in results.get("targets", {}).values():
        met = t["met"]
        if met is None:
            met = f"n/a ({t.get('note', 'not measured')})"
        rows.append((t["figure"], _fmt(t["value"]), t["target"],
                     "yes" if met is True else "no" if met is False else met))
    lines += _table(rows)
    noise = results["machine"].get("during_run") or {}
    if noise:
        lines += ["", f"during the run, besides this benchmark: other processes used "
                  f"{noise.get('others', 0):.2f} cores on average, the hypervisor took "
                  f"{noise.get('steal', 0):.2f} (steal), some task waited for a CPU "
                  f"{noise.get('cpu_wait_share', 0):.0%} of the time"]
    lines += ["", "side by side (same run, same client)"]
    rows = [("run", "per s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "per CPU-s",
             "cores: proc/broker/client/others/steal")]
    for key, label in (("gatepass_1_worker", "Gatepass closed loop, 1 worker"),
                       ("gatepass_2_workers", "Gatepass closed loop, 2 workers"),
                       ("echo", "faust echo closed loop"),
                       ("raw", "raw confluent-kafka closed loop")):
        r = thr.get(key)
        if r:
            li = r.get("latency_in_loop", {})
            rows.append((label, _fmt(r["per_s"]), _fmt(li.get("p50_ms")), _fmt(li.get("p99_ms")),
                         _fmt(li.get("p99_9_ms")), _fmt(li.get("max_ms")),
                         _fmt(r.get("answers_per_processor_cpu_second")), _cores(r)))
    for key, label in (("gatepass_offered", "Gatepass open loop"),
                       ("gatepass_sustained", "Gatepass open loop"),
                       ("echo_offered", "echo open loop"), ("echo_sustained", "echo open loop"),
                       ("raw_offered", "raw open loop"), ("raw_sustained", "raw open loop")):
        r = lat.get(key)
        if r:
            li = r["latency"]
            rows.append((f"{label} at {r['offered_per_s']:,.0f}/s "
                         f"(answered {r['answered_per_s_while_sending']:,.0f}/s)",
                         _fmt(r["offered_per_s"]), _fmt(li["p50_ms"]), _fmt(li["p99_ms"]),
                         _fmt(li["p99_9_ms"]), _fmt(li["max_ms"]),
                         _fmt(r.get("answers_per_processor_cpu_second")), _cores(r)))
    lines += _table(rows)
    ratios = results.get("ratios", {})
    if ratios:
        lines += ["", "Gatepass / baseline: " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in ratios.items())]
    return "\n".join(lines)


def _cores(entry: dict[str, Any]) -> str:
    cores = entry.get("cpu_cores") or {}
    proc = sum(v or 0.0 for k, v in cores.items() if k.startswith(("worker", "echo")))

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    return "/".join((f(proc) if any(k.startswith(("worker", "echo")) for k in cores) else "-",
                     f(cores.get("broker")), f(cores.get("load_generator")),
                     f(cores.get("others")), f(cores.get("steal"))))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def plot(results: dict[str, Any], cdfs: dict[str, list[tuple[float, float]]],
         out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    colours = {"Gatepass": "tab:blue", "faust echo": "tab:green", "raw Kafka": "tab:grey"}
    for label, points in cdfs.items():
        if points:
            xs, ys = zip(*points, strict=True)
            colour = next((c for k, c in colours.items() if label.startswith(k)), None)
            left.plot(xs, ys, label=label, color=colour,
                      linestyle="--" if "offered" in label else "-")
    left.set_xscale("log")
    left.set_xlabel("intent -> verdict as the client sees it (ms, log scale)")
    left.set_ylabel("fraction of intents")
    left.set_title("Latency CDF (open loop)")
    left.axvline(10, color="grey", linestyle=":", linewidth=1)
    left.axvline(50, color="grey", linestyle="--", linewidth=1)
    left.grid(True, which="both", alpha=0.3)
    if any(cdfs.values()):
        left.legend(fontsize=8, loc="lower right")

    thr = results.get("throughput", {})
    bars = [(label, thr[key]["per_s"]) for key, label in (
        ("gatepass_1_worker", "Gatepass\n1 worker"), ("gatepass_2_workers", "Gatepass\n2 workers"),
        ("echo", "faust echo\n(no decision)"), ("raw", "raw Kafka\nround trip"))
        if key in thr]
    if bars:
        names, values = zip(*bars, strict=True)
        colors = ["tab:blue", "tab:blue", "tab:grey", "tab:grey"][:len(values)]
        drawn = right.bar(names, values, color=colors)
        right.bar_label(drawn, labels=[f"{v:,.0f}" for v in values])
        right.axhline(5000, color="tab:red", linestyle="--", linewidth=1,
                      label="target, 1 worker")
        right.axhline(10000, color="tab:red", linestyle=":", linewidth=1,
                      label="target, 2 workers")
        right.legend(fontsize=8)
    right.set_ylabel("answers per second (closed loop)")
    right.set_title("Throughput")
    m = results["machine"]
    fig.suptitle(f"Gatepass benchmark, {results['profile']['name']} profile - {m['cpu_model']}, "
                 f"{m['cores']} cores, Kafka {m['kafka']}, Python {m['python']} "
                 f"({results['started_at'][:16]}Z)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
