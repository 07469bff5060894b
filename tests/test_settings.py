"""Settings that must not assume one broker: several bootstrap servers, in any common form."""

from __future__ import annotations

import pytest
from faust.transport.drivers.aiokafka import server_list
from faust.utils.urls import urllist

from pipeline.settings import Settings


@pytest.mark.parametrize("given", [
    "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094",
    "127.0.0.1:9092, 127.0.0.1:9093 ,127.0.0.1:9094",
    "127.0.0.1:9092;127.0.0.1:9093;127.0.0.1:9094",
    "kafka://127.0.0.1:9092;kafka://127.0.0.1:9093,127.0.0.1:9094,",
])
def test_several_bootstrap_servers_in_one_form(given: str) -> None:
    s = Settings(bootstrap_servers=given)
    assert s.bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
    # The worker hands Faust f"kafka://{bootstrap}"; Faust must give aiokafka all three.
    urls = urllist(f"kafka://{s.bootstrap_servers}", default_scheme="kafka")
    assert server_list(urls, 9092) == ["127.0.0.1:9092", "127.0.0.1:9093", "127.0.0.1:9094"]


def test_bootstrap_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_BOOTSTRAP_SERVERS", " b1:9092 , b2:9092 ")
    assert Settings().bootstrap_servers == "b1:9092,b2:9092"


@pytest.mark.parametrize("given", [None, "", " , "])
def test_no_bootstrap_means_the_local_broker(given: str | None) -> None:
    s = Settings(bootstrap_servers=given)
    assert s.bootstrap_servers is None
