"""The HTTP collector: the Segment HTTP tracking API in front of leadflow's input topics.

Run it with `leadflow collector`; existing Segment SDKs work by pointing their host at it.
"""

from pipeline.collector.app import create_app

__all__ = ["create_app"]
