"""What /readyz says about standby partitions, over stand-ins for Faust's objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from faust.types import TP

from pipeline.stream.web import standby_positions


@dataclass
class _Store:
    offsets: dict[TP, int | None]

    def persisted_offset(self, tp: TP) -> int | None:
        return self.offsets.get(tp)


@dataclass
class _Consumer:
    ends: dict[TP, int] = field(default_factory=dict)

    def highwater(self, tp: TP) -> int | None:
        return self.ends.get(tp)


def test_each_standby_partition_names_its_stored_offset_and_the_end_seen() -> None:
    leads1, leads3, ident0 = TP("a-leads-changelog", 1), TP("a-leads-changelog", 3), \
        TP("a-identity-changelog", 0)
    leads = SimpleNamespace(name="leads", data=_Store({leads1: 41, leads3: None}))
    identity = SimpleNamespace(name="identity", data=_Store({ident0: 7}))
    recovery = SimpleNamespace(standby_tps={leads1, leads3, ident0},
                               tp_to_table={leads1: leads, leads3: leads, ident0: identity})
    app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery),
                          consumer=_Consumer({leads1: 50, ident0: 8}))
    assert standby_positions(app) == {
        "identity": {"0": {"stored": 7, "end": 8}},
        # nothing stored yet: -1; no fetch yet: no end
        "leads": {"1": {"stored": 41, "end": 50}, "3": {"stored": -1, "end": None}},
    }
    app.consumer = None  # before the consumer exists
    assert standby_positions(app)["leads"]["1"] == {"stored": 41, "end": None}
