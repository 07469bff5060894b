"""`leadflow bench`: the end-to-end benchmark (`benchmarks/e2e_bench.py`) from the command line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import typer

from pipeline.cli.errors import fail
from pipeline.errors import LeadflowError
from pipeline.settings import Settings

BENCH_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e_bench.py"
ALL_SYSTEMS = "limit,naive_faust,quixstreams,quix_leadflow,leadflow,leadflow_2w"


def _load() -> ModuleType:
    if not BENCH_FILE.exists():
        raise typer.BadParameter(f"{BENCH_FILE} not found (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("leadflow_e2e_bench", BENCH_FILE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"leadflow bench: {report['events']:,} events, {report['leads']:,} leads, "
                    f"latency at {report['offered_rate']:,.0f} events/s")
    for col in ("system", "events_per_s", "per_cpu_s", "p50_ms", "p99_ms", "peak_rss_mb",
                "ratio_to_limit", "notes"):
        t.add_column(col, justify="left" if col in ("system", "notes") else "right")
    for name, r in report["systems"].items():
        if not r["available"]:
            t.add_row(name, "unavailable", "", "", "", "", "", r["reason"][:200])
            continue
        t.add_row(name, _fmt(r["events_per_s"], 0), _fmt(r.get("events_per_cpu_s"), 0),
                  _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
                  _fmt(r["peak_rss_mb"]), _fmt(r["ratio_to_limit"], 3), "; ".join(r["notes"]))
    m = report["machine"]
    t.caption = (f"{m['nproc']} cores, Python {m['python']}; load average at start "
                 f"{report['loadavg_start']}, at end {report['loadavg_end']} (shared machine); "
                 f"topics {report['prefix']}.*")
    Console().print(t)


def register(app: typer.Typer) -> None:
    """Add `leadflow bench` to the root app."""

    @app.command()
    def bench(
        events: int = typer.Option(300_000, help="Events in the throughput phase."),
        leads: int = typer.Option(100_000, help="Distinct leads (every one is identified)."),
        systems: str = typer.Option(ALL_SYSTEMS, help="Comma-separated systems to run."),
        rate: float = typer.Option(5000.0, help="Offered rate of the latency phase, events/s."),
        latency_s: float = typer.Option(10.0, help="Duration of the latency phase, seconds."),
        seed: int = typer.Option(7, help="Traffic seed."),
        max_s: float = typer.Option(120.0, help="Cut a system's throughput phase after this."),
        drain_s: float = typer.Option(30.0, help="Longest wait for the latency traffic."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Measure leadflow end to end against the raw client, naive Faust and Quix Streams."""
        from pipeline.devkafka.local import ensure_local_broker, local_status, stop_local_broker

        names = [s.strip() for s in systems.split(",") if s.strip()]
        mod = _load()
        unknown = [n for n in names if n not in mod.SYSTEMS]
        if unknown:
            raise typer.BadParameter(f"unknown systems {unknown}; known: {ALL_SYSTEMS}")
        settings = Settings()

        def log(text: str) -> None:
            typer.echo(text, err=True)

        had_broker = bool(settings.bootstrap_servers) or local_status(settings) is not None
        try:
            bootstrap = ensure_local_broker(settings)
            report = asyncio.run(mod.bench(
                bootstrap, events=events, leads=leads, systems=names, rate=rate,
                latency_s=latency_s, seed=seed, max_s=max_s, drain_s=drain_s,
                log=log))
        except LeadflowError as exc:
            raise fail(exc) from None
        finally:
            if not had_broker:
                stop_local_broker(settings)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            _table(report)
