"""Build the app from settings and run it as a Faust worker process."""

from __future__ import annotations

import asyncio
import gc
import logging

from prometheus_client import CollectorRegistry

from pipeline import __version__
from pipeline.core.rules import CompiledRules, load_default_rules, load_rules
from pipeline.kafka.bootstrap import configured_bootstrap
from pipeline.kafka.security import KafkaSecurity
from pipeline.kafka.topics import ensure_topics, topic_specs
from pipeline.metrics.registry import Metrics
from pipeline.settings import Settings
from pipeline.stream.access import check_web_exposure
from pipeline.stream.app import LeadflowApp
from pipeline.stream.web import free_web_port


def load_configured_rules(settings: Settings) -> CompiledRules:
    """The rules file from settings, or the shipped default rules."""
    if settings.rules_file is not None:
        return load_rules(settings.rules_file)
    return load_default_rules()


def build(settings: Settings, *, bootstrap: str | None = None) -> LeadflowApp:
    """Everything a worker needs, read once: settings, rules, broker address, metrics.

    ``bootstrap`` defaults to the configured servers (NoClusterConfigured if none): the worker
    never starts or looks for a development broker; ``leadflow worker`` passes that one in.
    Refuses (ConfigError) a lead API on a network interface without LEADFLOW_API_TOKEN.
    """
    check_web_exposure(settings)
    if settings.web_port == 0:
        settings = settings.model_copy(update={"web_port": free_web_port(settings.web_host)})
    rules = load_configured_rules(settings)
    return LeadflowApp(
        settings,
        rules,
        bootstrap=bootstrap or configured_bootstrap(settings),
        metrics=Metrics(
            CollectorRegistry(),
            sources=settings.topics.inputs().values(),
            teams=[*rules.teams(), "nurture", "recycle", "review"],
            rejection_reasons=rules.rejection_reasons,
            channels=rules.channel_names(),
            models=rules.attribution_models,
            rules_version=rules.version,
            version=__version__,
        ),
    )


def ensure_all_topics(settings: Settings, bootstrap: str, rules: CompiledRules) -> None:
    """Create missing topics before Faust subscribes (it ignores topics that are missing)."""
    asyncio.run(ensure_topics(bootstrap, topic_specs(settings, teams=rules.teams()),
                              security=KafkaSecurity.from_settings(settings)))
    # asyncio.run leaves no current loop behind; Faust asks for one.
    asyncio.set_event_loop(asyncio.new_event_loop())


#: Allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often, and never walk what was built at start.

    A batch allocates hundreds of thousands of short-lived objects, nearly all freed by
    reference counting; at the default threshold the collector ran after every 700 of
    them and its older generations kept walking the modules, rules and app built at start
    (`benchmarks/steps_bench.py`: about a quarter of the steps' CPU time). Our own data
    makes no reference cycles worth collecting sooner.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


def run(settings: Settings, *, bootstrap: str | None = None, loglevel: str = "info") -> None:
    """Run a worker until SIGINT/SIGTERM (blocks); ``bootstrap`` as in ``build``."""
    import faust

    lf = build(settings, bootstrap=bootstrap)
    ensure_all_topics(settings, lf.bootstrap, lf.rules)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker = faust.Worker(
        lf.app,
        loglevel=loglevel,
        redirect_stdouts=False,
    )

    async def announce_rules() -> None:  # a task: Faust has set logging up by then
        logging.getLogger(__name__).info(
            "deciding with rules version %s (%s); web views on %s:%d", lf.rules.version,
            settings.rules_file or "the shipped rules", lf.settings.web_host,
            lf.settings.web_port)

    lf.app.task(announce_rules)

    tune_gc()
    worker.execute_from_commandline()
