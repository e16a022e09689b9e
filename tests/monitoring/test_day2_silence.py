"""The day-2 playbooks' silence, against a real Alertmanager: the role's silence tasks (run by
ansible-playbook, as rolling_restart.yml and upgrade.yml run them) silence exactly the expected
alerts, and its unsilence tasks expire that silence so alerts page again."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.monitoring.conftest import REPO
from tests.monitoring.procs import free_port, wait_until
from tests.monitoring.test_alert_pipeline import Sink, alertmanager, sink  # noqa: F401

pytestmark = pytest.mark.monitoring

PLAYBOOKS = REPO / "playbooks"
DEFAULTS = PLAYBOOKS / "roles" / "petals_day2" / "defaults" / "main.yml"


def run_role_tasks(
    tmp_path: Path,
    tasks_from: str,
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    """Run one task file of the petals_day2 role on localhost, as the day-2 playbooks include it;
    ``env`` adds to the controller's environment (e.g. its TZ)."""
    playbook = tmp_path / f"{tasks_from}.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": f"petals_day2 {tasks_from}",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": tasks_from,
                            "ansible.builtin.include_role": {
                                "name": "petals_day2",
                                "tasks_from": tasks_from,
                            },
                        }
                    ],
                }
            ]
        )
    )
    argv = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        "-i",
        "localhost,",
        str(playbook),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    for key, value in extra.items():
        argv += ["-e", f"{key}={value}"]
    full_env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        **(env or {}),
    }
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=full_env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def post_alert(url: str, name: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    body = [
        {
            "labels": {"alertname": name, "model": "m", "severity": "critical"},
            "annotations": {"summary": name},
            "startsAt": (now - datetime.timedelta(minutes=1)).isoformat(),
        }
    ]
    response = httpx.post(f"{url}/api/v2/alerts", json=body, timeout=5)
    assert response.status_code == 200, response.text


def states(url: str) -> dict[str, str]:
    alerts: list[dict[str, Any]] = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return {a["labels"]["alertname"]: a["status"]["state"] for a in alerts}


# From controllers west and east of UTC (POSIX TZ strings, no tzdata needed) and in UTC: the
# silence's start and end are UTC times whatever the controller's zone.
@pytest.mark.parametrize("tz", ["LAB+5", "LAB-9", "UTC"])
def test_the_day2_silence_holds_expected_alerts_and_is_removed_after(
    tmp_path: Path,
    sink: Sink,  # noqa: F811
    tz: str,
):
    expected_alerts = yaml.safe_load(DEFAULTS.read_text())["petals_day2_silenced_alerts"]
    assert "PetalsBlockUncovered" in expected_alerts and "Watchdog" not in expected_alerts

    with alertmanager(tmp_path, sink.url) as url:
        run_role_tasks(tmp_path, "silence", env={"TZ": tz}, petals_day2_alertmanager_url=url)
        silences = httpx.get(f"{url}/api/v2/silences", timeout=5).json()
        assert len(silences) == 1 and silences[0]["status"]["state"] == "active"
        silence = silences[0]
        assert silence["createdBy"] == "petals-swarm-kit day-2 playbook"
        starts = datetime.datetime.fromisoformat(silence["startsAt"]).timestamp()
        ends = datetime.datetime.fromisoformat(silence["endsAt"]).timestamp()
        assert abs(starts - time.time()) < 300, silence  # now, not hours off
        minutes = yaml.safe_load(DEFAULTS.read_text())["petals_day2_silence_minutes"]
        assert abs(ends - starts - minutes * 60) < 5, silence

        # A page the restart sets off is silenced; the Watchdog and a GPU problem are not.
        for name in ("PetalsBlockUncovered", "Watchdog", "GpuEccDoubleBitErrors"):
            post_alert(url, name)
        wanted = {
            "PetalsBlockUncovered": "suppressed",
            "Watchdog": "active",
            "GpuEccDoubleBitErrors": "active",
        }
        wait_until(lambda: states(url) == wanted, timeout=20, what=f"alert states {wanted}")

        run_role_tasks(
            tmp_path, "unsilence", petals_day2_alertmanager_url=url,
            petals_day2_silence_id=silence["id"],
        )  # fmt: skip
        after = httpx.get(f"{url}/api/v2/silence/{silence['id']}", timeout=5).json()
        assert after["status"]["state"] == "expired"
        wait_until(
            lambda: states(url)["PetalsBlockUncovered"] == "active",
            timeout=20,
            what="PetalsBlockUncovered to page again once the silence is gone",
        )


def test_an_alertmanager_that_does_not_answer_does_not_stop_the_run(tmp_path: Path):
    # Nothing listens there: nothing can page either, so the restart goes on, with a warning.
    url = f"http://127.0.0.1:{free_port()}"
    out = run_role_tasks(tmp_path, "silence", petals_day2_alertmanager_url=url).stdout
    assert "did not take the silence" in out
    run_role_tasks(tmp_path, "unsilence", petals_day2_alertmanager_url=url)
