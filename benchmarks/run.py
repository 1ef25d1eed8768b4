"""The Gatepass benchmark, side by side with bare baselines, in one run on one machine.

    make bench                              # = python -m benchmarks.run (the full profile)
    python -m benchmarks.run --quick        # shorter runs, 100,000 identities
    python -m benchmarks.run --smoke --out /tmp/b --bootstrap HOST:PORT   # CI: seconds

Starts its own Kafka broker (free ports, temporary home; --bootstrap uses a running one),
then, in this order (docs/benchmarks.md says what each measures and how):

    verifier      PassVerifier.verify on valid distinct passes, one core
    pipeline      the worker's Pipeline.on_intent alone, no faust or Kafka
    gatepass      one worker: revoke, orphan alerts, closed-loop throughput, a py-spy
                  profile, open loop at a sustained rate; two workers: closed-loop
                  throughput; one worker again: open loop at the offered 1,000/s (last,
                  as it may leave a backlog)
    echo          a faust app configured like the worker that answers without deciding
    raw           confluent-kafka produce -> consume, nothing between
    recovery      a fresh worker behind N identities: time to ready, RSS per identity

Writes <out>/latest.json and <out>/latest.png (raw latencies and the profile under
<out>/raw/, not committed; a run with a failed section writes latest-failed.* instead and
leaves the last complete run in place), prints a summary table. Asserts nothing about
time: targets are judged in the JSON (met true/false) for the reader.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import inprocess, profiling, recovery, report, revoke
from benchmarks.common import (
    PROFILES,
    REPO,
    Broker,
    CpuMeter,
    Profile,
    Progress,
    bench_settings,
    cdf_points,
    machine,
    own_broker,
    profile_dict,
)
from benchmarks.echo import EchoProcess
from benchmarks.load import ClosedLoopResult, OpenLoopResult, RawRoundTrip, closed_loop, open_loop
from benchmarks.population import IntentMix, build_population
from benchmarks.stack import GatepassStack, gatepass_stack
from gatepass.sdk import GatepassClient
from gatepass.transport import ensure_topics

SECTIONS = ("verifier", "pipeline", "gatepass", "echo", "raw", "recovery")
DEFAULT_OUT = REPO / "benchmarks" / "results"


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it (read-only git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=False)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "modified_files": None if status is None else len(status.splitlines())}


class Run:
    def __init__(self, profile: Profile, out: Path, home: Path, progress: Progress,
                 sections: tuple[str, ...], profile_worker: bool) -> None:
        self.profile = profile
        self.out = out
        self.raw_dir = out / "raw"
        self.home = home
        self.progress = progress
        self.sections = sections
        self.profile_worker = profile_worker and profile.profile_seconds > 0
        self.results: dict[str, Any] = {
            "schema": "gatepass-bench/1",
            "started_at": datetime.now(UTC).isoformat(),
            "profile": profile_dict(profile),
            "code": code_version(),
            "throughput": {}, "latency": {}, "errors": {}, "section_seconds": {},
        }
        self.open_loops: dict[str, OpenLoopResult] = {}
        self.template = b""

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def section(self, name: str, title: str) -> Iterator[bool]:
        if name not in self.sections:
            yield False
            return
        self.progress.section(title)
        started = time.monotonic()
        try:
            yield True
        except Exception as exc:
            self.results["errors"][name] = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
            self.progress.note(f"!! {name} failed: {type(exc).__name__}: {exc}")
        finally:
            self.results["section_seconds"][name] = round(time.monotonic() - started, 1)

    def closed(self, name: str, submit: Callable[..., Any], make: Callable[..., Any],
               label: str, seconds: float | None = None) -> ClosedLoopResult:
        p = self.profile
        result = closed_loop(submit, make, window=p.window, warmup=p.warmup,
                             seconds=p.throughput_seconds if seconds is None else seconds,
                             progress=self.progress, label=label, drain_timeout=120)
        figures = result.to_json()
        self.progress.note(f"{label}: {result.rate:,.0f}/s ({result.answered:,} answers in "
                           f"{result.seconds:g} s, window {result.window})")
        self.results["throughput"][name] = figures
        return result

    def opened(self, name: str, submit: Callable[..., Any], make: Callable[..., Any],
               rate: float, seconds: float, label: str,
               drain_timeout: float | None = None) -> OpenLoopResult:
        result = open_loop(submit, make, rate=rate, seconds=seconds,
                           warmup=min(self.profile.warmup, seconds / 4), progress=self.progress,
                           label=label, drain_timeout=drain_timeout)
        figures = result.to_json()
        lat = figures["latency"]
        self.progress.note(
            f"{label}: offered {rate:,.0f}/s, answered "
            f"{figures['answered_per_s_while_sending']:,.0f}/s while sending; "
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, p99.9 "
            f"{lat['p99_9_ms']} ms, max {lat['max_ms']} ms; backlog at end "
            f"{figures['backlog_at_end_of_sending']:,}")
        self.results["latency"][name] = figures
        self.open_loops[name] = result
        return result

    def with_cpu(self, name: str, pids: dict[str, int | None], run: Callable[[], Any]) -> Any:
        """Run one loop and record the CPU cores each process used meanwhile."""
        meter = CpuMeter({**pids, "load_generator": os.getpid()}).start()
        value = run()
        cores = meter.stop()
        for kind in ("throughput", "latency"):
            entry = self.results[kind].get(name)
            if entry is None:
                continue
            entry["cpu_cores"] = cores
            # Answers per CPU-second of the processor (workers or echo): a figure that holds
            # better than the rate when other processes take CPU from this run.
            used = sum(v or 0.0 for k, v in cores.items() if k.startswith(("worker", "echo")))
            rate = entry.get("per_s") or entry.get("answered_per_s_while_sending")
            if used > 0 and rate:
                entry["answers_per_processor_cpu_second"] = round(rate / used, 1)
        return value

    def sustained_rate(self) -> float:
        p = self.profile
        one = self.results["throughput"].get("gatepass_1_worker", {}).get("per_s")
        rate = p.sustainable_fraction * one if one else p.latency_rate * p.sustainable_fraction
        if p.max_latency_rate:
            rate = min(rate, p.max_latency_rate)
        return max(10.0, round(rate / 10) * 10)

    # -- sections ---------------------------------------------------------------------------

    def run(self, broker: Broker) -> None:
        self.results["machine"] = machine(broker.kafka_version)
        broker_pid = {"broker": broker.pid}
        # The whole run: what the rest of the machine (and the hypervisor) took meanwhile.
        # Ours: the broker, this process, and the workers and baselines it ran (its children,
        # counted once it has waited for them, which it has by the end).
        noise = CpuMeter({**broker_pid, "benchmark": os.getpid()},
                         with_reaped_children=frozenset({"benchmark"})).start()
        try:
            self.sections_in_order(broker, broker_pid)
        finally:
            self.results["machine"]["during_run"] = noise.stop()

    def run_inprocess(self) -> None:
        """The in-process sections, before any broker starts: a JVM booting beside them took
        CPU from what they measure (the verifier read 218 us per pass with the new broker
        starting, 175 us on the same machine without it)."""
        p = self.profile
        noise = CpuMeter({"benchmark": os.getpid()}).start()
        try:
            with self.section("verifier", "verifier: PassVerifier.verify, one core") as on:
                if on:
                    self.results["verifier"] = inprocess.verifier(self.home, p.verifier_passes)
                    v = self.results["verifier"]
                    self.progress.note(f"{v['per_s_cpu']:,}/s per CPU-second "
                                       f"({v['us_per_verify_cpu']} us each, Ed25519 alone "
                                       f"{v['us_ed25519_alone_cpu']} us)")

            with self.section("pipeline", "pipeline alone: Pipeline.on_intent, no faust/Kafka"):
                # Always: the echo baseline needs its verdict template.
                figures, self.template = inprocess.pipeline_alone(
                    self.home, 4000 if p.name != "smoke" else 400)
                self.results["pipeline_alone"] = figures
                self.results["identity_fold_alone"] = inprocess.identity_fold_alone(
                    50_000 if p.name != "smoke" else 2000)
                self.progress.note(f"{figures['us_per_intent_cpu']} us per intent "
                                   f"(ceiling {figures['ceiling_per_s']:,}/s on one core)")
                fold = self.results["identity_fold_alone"]
                self.progress.note(f"identity fold {fold['us_per_record_cpu']} us per record "
                                   f"(fastavro path {fold['baseline_fastavro_us_per_record_cpu']}"
                                   f" us)")
                self.results["policy_eval"] = inprocess.policy_eval(
                    20_000 if p.name != "smoke" else 500, 2000 if p.name != "smoke" else 50)
                pe = self.results["policy_eval"]
                self.progress.note(f"Cedar per decision: median {pe['us_median']} us, p99 "
                                   f"{pe['us_p99']} us (allow-list baseline "
                                   f"{pe['baseline_us_median']} us)")
        finally:
            self.results["inprocess_during"] = noise.stop()

    def sections_in_order(self, broker: Broker, broker_pid: dict[str, int | None]) -> None:
        p = self.profile

        with self.section("gatepass", f"Gatepass: {p.agents:,} agents, one worker, then two"
                          ) as on:
            if on:
                self.gatepass(broker, broker_pid)

        with self.section("echo", "baseline: faust echo processor (no decision)") as on:
            if on:
                self.echo(broker, broker_pid)

        with self.section("raw", "baseline: raw confluent-kafka produce -> consume") as on:
            if on:
                self.raw(broker, broker_pid)

        with self.section("recovery", f"recovery: fresh worker behind {p.identities:,} "
                          "identities") as on:
            if on:
                self.results["recovery"] = recovery.recovery(
                    broker, self.home, p.identities, self.progress,
                    settle=0.5 if p.name == "smoke" else recovery.SETTLE)
                r = self.results["recovery"]
                self.progress.note(f"ready in {r['ready_seconds']} s; "
                                   f"{r['bytes_per_identity']} bytes RSS per identity")

    def gatepass(self, broker: Broker, broker_pid: dict[str, int | None]) -> None:
        p = self.profile
        with gatepass_stack(broker, self.home, agents=p.agents, orphan_agents=p.orphan_agents,
                            revoke_repeats=p.revoke_repeats, progress=self.progress) as gp:
            gp.warm_up(2.0 if p.name != "smoke" else 0.3)
            self.results["gatepass_setup"] = {
                "registered_agents": gp.pop.registered, "mix": IntentMix.expected,
                "partitions": gp.settings.partitions, "topic_prefix": gp.settings.topic_prefix,
                "worker_start_seconds": gp.start_seconds}

            pids = {**gp.pids(), **broker_pid, "load_generator": os.getpid()}
            self.progress.note("time to revoke (owner offboarded -> first DENY owner_inactive)")
            meter = CpuMeter(pids).start()
            self.results["revoke"] = revoke.time_to_revoke(gp, self.progress)
            self.results["revoke"]["cpu_cores"] = meter.stop()
            self.progress.note(f"orphan alerts for the {p.orphan_agents:,} agents of one owner")
            meter = CpuMeter(pids).start()
            self.results["orphans"] = revoke.orphan_alerts(gp, self.progress)
            self.results["orphans"]["cpu_cores"] = meter.stop()
            o = self.results["orphans"]
            self.progress.note(f"{o['alerts']:,}/{o['agents']:,} alerts, first {o['first_ms']}"
                               f" ms, last {o['last_ms']} ms")

            pids = {**gp.pids(), **broker_pid}
            self.with_cpu("gatepass_1_worker", pids, lambda: self.closed(
                "gatepass_1_worker", gp.client.submit, gp.mix.make, "closed loop, 1 worker"))
            if self.profile_worker:
                self.profile_under_load(gp)

            rate = self.sustained_rate()
            self.with_cpu("gatepass_sustained", pids, lambda: self.opened(
                "gatepass_sustained", gp.client.submit, gp.mix.make, rate, p.latency_seconds,
                f"open loop at {rate:,.0f}/s (sustained)"))

            self.progress.note("starting a second worker of the same app")
            second = gp.start_worker(self.progress)
            gp.warm_up(3.0 if p.name != "smoke" else 0.3)
            pids2 = {**gp.pids(), **broker_pid}
            self.with_cpu("gatepass_2_workers", pids2, lambda: self.closed(
                "gatepass_2_workers", gp.client.submit, gp.mix.make, "closed loop, 2 workers"))
            self.results["gatepass_setup"]["worker_start_seconds"] = gp.start_seconds
            gp.stop_worker(second)
            gp.wait_all_ready()
            gp.warm_up(2.0 if p.name != "smoke" else 0.3)

            # Last, as it may leave a backlog behind: the workers are stopped after it.
            self.with_cpu("gatepass_offered", pids, lambda: self.opened(
                "gatepass_offered", gp.client.submit, gp.mix.make, p.latency_rate,
                p.latency_seconds, f"open loop at {p.latency_rate:,.0f}/s (offered)",
                drain_timeout=p.drain_seconds))

    def profile_under_load(self, gp: GatepassStack) -> None:
        p = self.profile
        worker = gp.workers[0]
        if worker.proc is None:
            return
        out = self.raw_dir / "worker-profile.txt"
        self.progress.note(f"py-spy on worker 1 (pid {worker.proc.pid}) for "
                           f"{p.profile_seconds:g} s under the closed loop")
        spy = profiling.start(worker.proc.pid, p.profile_seconds, out)
        if spy is None:
            self.results["profile_worker"] = {"error": "py-spy not found"}
            return
        loaded = closed_loop(gp.client.submit, gp.mix.make, window=p.window, warmup=1.0,
                             seconds=p.profile_seconds, progress=self.progress,
                             label="closed loop under py-spy")
        spy.wait(timeout=120)
        log = out.with_suffix(".log")
        summary: dict[str, Any] = (profiling.summarize(out) if out.exists() else
                                   {"error": log.read_text(errors="replace")[-1000:]})
        summary["decisions_per_s_while_profiled"] = round(loaded.rate, 1)
        summary["raw_file"] = str(out.relative_to(self.out)) if out.exists() else None
        self.results["profile_worker"] = summary
        top = list(summary.get("main_thread_busy_by_stage", {}).items())[:5]
        self.progress.note(f"main thread busy {summary.get('main_thread_busy_share')}: "
                           + ", ".join(f"{k} {v:.0%}" for k, v in top))

    def echo(self, broker: Broker, broker_pid: dict[str, int | None]) -> None:
        p = self.profile
        settings = bench_settings(broker.bootstrap, self.home, "echo")
        ensure_topics(settings)
        template_file = settings.home / "verdict-template.bin"
        template_file.parent.mkdir(parents=True, exist_ok=True)
        template_file.write_bytes(self.template)
        echo = EchoProcess(settings, log_file=settings.home / "echo.log",
                           template_file=template_file).start()
        try:
            echo.wait_ready(180)
            pop, _events = build_population(max(p.agents // 10, 50), 0, 0)
            mix = IntentMix(pop)  # the same shapes and sizes of intents; nobody registered
            pids = {"echo": echo.proc.pid if echo.proc else None, **broker_pid}
            with GatepassClient.from_settings(settings, timeout=120) as client:
                closed_loop(client.submit, mix.make, window=50, warmup=0,
                            seconds=1.0 if p.name != "smoke" else 0.2,
                            progress=self.progress, label="echo warm-up")
                self.with_cpu("echo", pids, lambda: self.closed(
                    "echo", client.submit, mix.make, "echo closed loop"))
                for name, rate in (("echo_sustained", self.sustained_rate()),
                                   ("echo_offered", p.latency_rate)):
                    self.with_cpu(name, pids, functools.partial(
                        self.opened, name, client.submit, mix.make, rate,
                        p.baseline_latency_seconds, f"echo open loop at {rate:,.0f}/s"))
        finally:
            echo.stop(timeout=30)

    def raw(self, broker: Broker, broker_pid: dict[str, int | None]) -> None:
        p = self.profile
        settings = bench_settings(broker.bootstrap, self.home, "raw")
        ensure_topics(settings)
        pop, _events = build_population(max(p.agents // 10, 50), 0, 0)
        mix = IntentMix(pop)
        with RawRoundTrip(settings.bootstrap, settings.topics.intents) as rt:
            closed_loop(rt.submit, mix.make, window=50, warmup=0,
                        seconds=1.0 if p.name != "smoke" else 0.2, progress=self.progress,
                        label="raw warm-up")
            self.with_cpu("raw", broker_pid, lambda: self.closed(
                "raw", rt.submit, mix.make, "raw closed loop"))
            for name, rate in (("raw_sustained", self.sustained_rate()),
                               ("raw_offered", p.latency_rate)):
                self.with_cpu(name, broker_pid, functools.partial(
                    self.opened, name, rt.submit, mix.make, rate, p.baseline_latency_seconds,
                    f"raw open loop at {rate:,.0f}/s"))

    # -- results ----------------------------------------------------------------------------

    def finish(self) -> Path:
        r = self.results
        r["finished_at"] = datetime.now(UTC).isoformat()
        r["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        thr, lat = r["throughput"], r["latency"]
        ratios: dict[str, float] = {}

        def ratio(name: str, a: Any, b: Any) -> None:
            if a is not None and b:
                ratios[name] = round(a / b, 4)

        g1 = thr.get("gatepass_1_worker", {}).get("per_s")
        ratio("throughput_1_worker_vs_echo", g1, thr.get("echo", {}).get("per_s"))
        ratio("throughput_1_worker_vs_raw", g1, thr.get("raw", {}).get("per_s"))
        ratio("answers_per_processor_cpu_second_vs_echo",
              thr.get("gatepass_1_worker", {}).get("answers_per_processor_cpu_second"),
              thr.get("echo", {}).get("answers_per_processor_cpu_second"))
        for rate_key in ("sustained", "offered"):
            g = lat.get(f"gatepass_{rate_key}", {}).get("latency", {})
            for base in ("echo", "raw"):
                b = lat.get(f"{base}_{rate_key}", {}).get("latency", {})
                for q in ("p50_ms", "p99_ms"):
                    ratio(f"latency_{q[:-3]}_{rate_key}_vs_{base}", g.get(q), b.get(q))
        r["ratios"] = ratios
        r["targets"] = report.targets(r)

        self.out.mkdir(parents=True, exist_ok=True)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        labels = {"gatepass_offered": "Gatepass, offered", "gatepass_sustained":
                  "Gatepass, sustained", "echo_offered": "faust echo, offered",
                  "echo_sustained": "faust echo, sustained", "raw_offered": "raw Kafka, offered",
                  "raw_sustained": "raw Kafka, sustained"}
        cdfs = {f"{labels[k]} {v.rate:,.0f}/s": cdf_points(v.latencies_ms)
                for k, v in self.open_loops.items()}
        r["latency_cdf"] = {k: [list(pt) for pt in pts] for k, pts in cdfs.items()}
        with gzip.open(self.raw_dir / "latencies.json.gz", "wt") as f:
            json.dump({k: {"scheduled_to_answer_ms": v.latencies_ms,
                           "sent_to_answer_ms": v.sdk_latencies_ms}
                       for k, v in self.open_loops.items()}, f)
        # A run with a failed section does not replace the last complete one.
        name = "latest-failed" if r["errors"] else "latest"
        path = self.out / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(r, indent=1, default=str) + "\n")
        tmp.replace(path)
        try:
            report.plot(r, cdfs, path.with_suffix(".png"))
        except Exception as exc:  # the figures stand without the picture
            r["errors"]["plot"] = f"{type(exc).__name__}: {exc}"
            path.write_text(json.dumps(r, indent=1, default=str) + "\n")
        return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true",
                       help="shorter runs and 100,000 identities (see Profile in common.py)")
    group.add_argument("--smoke", action="store_true", help="tiny counts, seconds (CI)")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting one")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="where latest.json/latest.png go (default benchmarks/results)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    ap.add_argument("--quiet", action="store_true", help="no progress display")
    args = ap.parse_args(argv)

    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    progress = Progress(quiet=args.quiet)
    home = Path(tempfile.mkdtemp(prefix="gatepass-bench-"))
    run = Run(profile, args.out.resolve(), home, progress, tuple(args.only or SECTIONS),
              profile_worker=not args.no_profile)
    progress.section(f"Gatepass benchmark, {profile.name} profile (work dir {home})")
    try:
        run.run_inprocess()
        with own_broker(args.bootstrap, progress) as broker:
            run.run(broker)
    except Exception as exc:  # the broker did not start: still write what there is
        run.results["errors"]["broker"] = f"{type(exc).__name__}: {exc}"
        run.results.setdefault("machine", machine("unknown"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    path = run.finish()
    print(report.summary_table(run.results))
    print(f"\nresults: {path}\nplot:    {path.with_suffix('.png')}")
    if run.results["errors"]:
        print(f"\nsections that failed: {', '.join(run.results['errors'])} (see the JSON)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
