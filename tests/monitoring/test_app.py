"""The health service under a real uvicorn on 127.0.0.1: state API, health check, status page."""

from __future__ import annotations

import httpx
import pytest

from monitoring.app import build_app
from monitoring.settings import DEFAULT_PORT, HealthSettings
from tests.monitoring.procs import serve_in_thread, wait_until
from tests.monitoring.synthetic import MutableFetch, peer, server, snapshot

pytestmark = pytest.mark.monitoring


def swarm_with_problems():
    return snapshot(
        server("gpu-a", 0, 4),
        server("gpu-b", 2, 6, state="joining"),
        server("mallory", 0, 8, trusted=False, public_name="mallory-box"),
        num_blocks=8,
        replication_target=2,
        trusted=(peer("gpu-a"), peer("gpu-b"), peer("gpu-c")),
    )


def test_state_names_blocks_servers_and_intruders(start_service):
    service = start_service(swarm_with_problems())

    state = httpx.get(f"{service.url}/api/v1/state", timeout=5).json()

    assert state["model"] == "petals-team/StableBeluga2"
    assert state["num_blocks"] == 8
    assert state["coverage"] == {
        "health": "broken",
        "ratio": 0.5,
        "covered_blocks": 4,
        "uncovered_blocks": [4, 5, 6, 7],
        "min_replication": 0,
        "replication_target": 2,
    }
    block2 = state["blocks"][2]
    assert block2["replication"] == 1
    assert block2["status"] == "under_replicated"
    assert [(s["public_name"], s["state"], s["trusted"]) for s in block2["servers"]] == [
        ("gpu-a", "online", True),
        ("gpu-b", "joining", True),
        ("mallory-box", "online", False),
    ]
    assert state["blocks"][7]["status"] == "uncovered"
    assert state["untrusted_servers"] == [
        {
            "peer_id": peer("mallory"),
            "public_name": "mallory-box",
            "state": "online",
            "start_block": 0,
            "end_block": 8,
        }
    ]
    assert state["trusted_missing"] == [
        {"peer_id": peer("gpu-b"), "public_name": "gpu-b", "state": "joining"},
        {"peer_id": peer("gpu-c"), "public_name": None, "state": None},
    ]
    assert {s["peer_id"] for s in state["servers"]} == {
        peer("gpu-a"),
        peer("gpu-b"),
        peer("mallory"),
    }
    assert state["refresh"]["ok"] and state["refresh"]["fresh"]
    assert state["refresh"]["errors_total"] == 0
    assert 0 <= state["refresh"]["age_s"] < 5


def test_state_is_healthy_when_every_block_meets_the_target(start_service):
    service = start_service(
        snapshot(server("a", 0, 8), server("b", 0, 4), server("c", 4, 8), replication_target=2)
    )

    state = httpx.get(f"{service.url}/api/v1/state", timeout=5).json()

    assert state["coverage"]["health"] == "healthy"
    assert {b["status"] for b in state["blocks"]} == {"ok"}
    assert state["untrusted_servers"] == [] and state["trusted_missing"] == []


def answer_when(url: str, status: int) -> httpx.Response:
    """Poll ``url`` until it answers with ``status``; return that response."""
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(httpx.get(url, timeout=5))
        return answers[-1].status_code == status

    wait_until(answered, timeout=10, what=f"{url} to answer {status}")
    return answers[-1]


def test_healthz_turns_503_when_reads_stop_and_200_when_they_resume(start_service):
    good = snapshot(server("a", 0, 8))
    service = start_service(good, refresh_interval_s=0.1, stale_after_intervals=3)
    healthz = f"{service.url}/healthz"
    assert httpx.get(healthz, timeout=5).status_code == 200

    service.fetch.fail(TimeoutError("DHT lookup timed out"))
    body = answer_when(healthz, 503).json()
    assert body["status"] == "stale"
    assert "older than 0.3 s" in body["reason"]
    assert "TimeoutError: DHT lookup timed out" in body["reason"]

    service.fetch.set(good)
    assert answer_when(healthz, 200).json()["status"] == "ok"


def test_before_the_first_read_state_and_healthz_say_so(start_service):
    service = start_service(None)
    service.fetch.fail(ConnectionError("no bootstrap peer answers"))

    health = httpx.get(f"{service.url}/healthz", timeout=5)
    state = httpx.get(f"{service.url}/api/v1/state", timeout=5)
    page = httpx.get(f"{service.url}/", timeout=5)

    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert state.status_code == 503
    assert state.json()["detail"] == "no successful read of the swarm's DHT yet"
    assert page.status_code == 200
    assert "Waiting for the first read" in page.text


def test_status_page_is_self_contained(start_service):
    service = start_service(swarm_with_problems(), page_refresh_s=2)

    page = httpx.get(f"{service.url}/", timeout=5)
    fragment = httpx.get(f"{service.url}/partials/status", timeout=5)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta name="viewport"' in html
    assert 'data-refresh-ms="2000"' in html
    assert "http://" not in html.replace(service.url, "") and "https://" not in html
    assert "<script src" not in html and '<link rel="stylesheet"' not in html
    assert html.count('class="block ') == 8
    assert "mallory-box" in html and peer("mallory") in html
    assert fragment.status_code == 200
    assert fragment.text.count('class="block ') == 8
    assert "<html" not in fragment.text


def test_metrics_route_formats_the_last_snapshot(start_service):
    service = start_service(swarm_with_problems())

    text = httpx.get(f"{service.url}/metrics", timeout=5).text

    assert 'petals_blocks_covered_ratio{model="petals-team/StableBeluga2"} 0.5' in text
    assert 'petals_untrusted_servers{model="petals-team/StableBeluga2"} 1.0' in text


def test_settings_come_from_prefixed_environment(monkeypatch):
    monkeypatch.setenv("PETALS_HEALTH_PORT", "9999")
    monkeypatch.setenv("PETALS_HEALTH_REPLICATION_TARGET", "3")

    settings = HealthSettings()

    assert (settings.host, settings.port, settings.replication_target) == ("127.0.0.1", 9999, 3)
    assert all(field.description for field in HealthSettings.model_fields.values())
    assert HealthSettings.model_fields["port"].default == DEFAULT_PORT


def test_settings_refuse_a_bad_interval():
    with pytest.raises(ValueError, match="refresh_interval_s"):
        HealthSettings(refresh_interval_s=0)


def test_build_app_wires_refresher_metrics_and_probe():
    fetch = MutableFetch(snapshot(server("a", 0, 8)))
    app = build_app(HealthSettings(refresh_interval_s=0.1), fetch, "petals-team/StableBeluga2")

    with serve_in_thread(app) as url:
        app.state.metrics.observe_probe(ttft_s=0.4, tokens_per_s=20.0)
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, timeout=10,
                   what="the first refresh")  # fmt: skip
        text = httpx.get(f"{url}/metrics", timeout=5).text

    assert 'petals_probe_runs_total{model="petals-team/StableBeluga2"} 1.0' in text
    assert 'petals_blocks_covered_ratio{model="petals-team/StableBeluga2"} 1.0' in text
    assert not app.state.refresher.running
