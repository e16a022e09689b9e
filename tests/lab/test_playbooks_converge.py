"""site.yml on real systemd hosts: it converges, the swarm serves, a second run changes nothing.

These tests only read the converged swarm (tests/lab/conftest_playbooks.py); the ones that
restart, kill and purge are in test_playbooks_operations.py, which runs after this file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.conftest_playbooks import (
    BOOTSTRAP_HOSTS,
    NUM_BLOCKS,
    OUTSIDER,
    PUBLIC_HOST,
    PYPI_HOST,
    REPLICATION,
    SERVER_HOSTS,
    SERVICE_HOST,
    SwarmLab,
    kit_ports,
)
from tests.lab.labhosts import REPO_ROOT, parse_recap

pytestmark = pytest.mark.lab

# Greedy generation through the swarm (the trusted client path) and with the same model loaded
# locally; prints both token lists as JSON.
GENERATE = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from client.generation import stream_generate
from client.petals_model import open_distributed_model
from swarm.swarm_settings import SwarmSettings

settings = SwarmSettings.load()
tokenizer = AutoTokenizer.from_pretrained(settings.model)
ids = tokenizer.apply_chat_template(
    [{"role": "user", "content": sys.argv[1]}], add_generation_prompt=True, return_tensors="pt"
)
local = AutoModelForCausalLM.from_pretrained(settings.model)
expected = local.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0, eos_token_id=2)
with open_distributed_model(settings) as remote:
    result = stream_generate(remote, tokenizer, ids, max_new_tokens=32)
print(json.dumps({"local": expected[0, ids.shape[1]:].tolist(), "swarm": result.token_ids}))
"""
# Opens a TCP connection from inside a host: prints OPEN or CLOSED (a drop times out).
CONNECT = "timeout 2 bash -c 'exec 3<>/dev/tcp/{}/{}' 2>/dev/null && echo OPEN || echo CLOSED"
SECURITY_THRESHOLD = 20  # systemd-analyze's exposure scale x10: 2.0 is "OK"


def test_site_converges_then_changes_nothing(swarm_lab: SwarmLab) -> None:
    first = parse_recap(swarm_lab.runs["first"].stdout)
    second = parse_recap(swarm_lab.runs["second"].stdout)
    assert sorted(first) == sorted(SERVER_HOSTS)
    assert all(counts["changed"] > 0 for counts in first.values()), first
    changed = {host: counts["changed"] for host, counts in second.items()}
    assert changed == dict.fromkeys(SERVER_HOSTS, 0), swarm_lab.runs["second"].stdout[-6000:]


def test_every_block_is_served_twice_by_trusted_servers(swarm_lab: SwarmLab) -> None:
    code, status = swarm_lab.status()
    trusted = set(swarm_lab.swarm_toml.read_text().split("trusted_servers = ")[1].split('"')[1::2])
    assert code == 0 and status["covered"]
    assert len(trusted) == len(SERVER_HOSTS)
    assert [len(servers) for servers in status["block_servers"]] == [REPLICATION] * NUM_BLOCKS
    assert {peer for servers in status["block_servers"] for peer in servers} == trusted
    names = {s["public_name"] for s in status["servers"] if s["state"] == "online"}
    assert names == {f"{host}-cpu" for host in SERVER_HOSTS}


def test_the_health_service_reports_full_coverage(swarm_lab: SwarmLab) -> None:
    if not swarm_lab.health:
        pytest.fail("this checkout's petalctl has no `health` subcommand", pytrace=False)
    url = f"http://{swarm_lab.lab.ip(SERVICE_HOST)}:9160/api/v1/state"
    res = swarm_lab.lab.run_controller(["curl", "-sf", "--max-time", "10", url], timeout=30)
    state = json.loads(res.stdout)
    assert state["coverage"]["uncovered_blocks"] == []
    assert state["coverage"]["min_replication"] == REPLICATION
    assert state["untrusted_servers"] == [] and state["trusted_missing"] == []


def test_generation_through_the_swarm_matches_the_local_model(swarm_lab: SwarmLab) -> None:
    res = swarm_lab.lab.run_controller(
        [sys.executable, "-c", GENERATE, "When is the exam?"],
        env={**swarm_lab.swarm_env, "PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    tokens = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(tokens["local"]) > 8
    assert tokens["swarm"] == tokens["local"]


def test_each_server_runs_its_planned_blocks_as_the_service_user(swarm_lab: SwarmLab) -> None:
    plan = json.loads((swarm_lab.inventory.parent / ".petals/plan.json").read_text())
    for host in SERVER_HOSTS:
        (planned,) = plan["hosts"][host]
        unit = swarm_lab.unit(host, "petals-server@0.service", "ActiveState", "MainPID", "Type")
        assert unit["ActiveState"] == "active" and unit["Type"] == "notify", (host, unit)
        user = swarm_lab.lab.ssh(host, f"ps -o user= -p {unit['MainPID']}").stdout.strip()
        env = swarm_lab.lab.ssh(host, "cat /etc/petals/server-0.env", check=True).stdout
        assert user == "petals", host
        assert f"PETALS_SERVER_BLOCKS={planned['start']}:{planned['end']}\n" in env, host
    for host in BOOTSTRAP_HOSTS:
        unit = swarm_lab.unit(host, "petals-dht-bootstrap.service", "ActiveState")
        assert unit["ActiveState"] == "active", host


def test_firewall_keeps_swarm_ports_to_the_trusted_network(swarm_lab: SwarmLab) -> None:
    lab = swarm_lab.lab
    targets = [(lab.ip("boot1"), 31337), (lab.ip("srv1"), 31337), (lab.ip("srv2"), 31340)]
    for ip, port in targets:
        assert lab.ssh(OUTSIDER, CONNECT.format(ip, port)).stdout.strip() == "CLOSED", (ip, port)
        assert lab.ssh("srv3", CONNECT.format(ip, port)).stdout.strip() == "OPEN", (ip, port)
    # The table touches only the kit's ports: SSH still answers the outsider.
    assert lab.ssh(OUTSIDER, CONNECT.format(lab.ip("srv2"), 22)).stdout.strip() == "OPEN"
    health = lab.ssh(OUTSIDER, CONNECT.format(lab.ip(SERVICE_HOST), 9160)).stdout.strip()
    assert health == "CLOSED"


def test_no_kit_port_was_ever_open_to_the_outsider_during_the_first_deploy(
    swarm_lab: SwarmLab,
) -> None:
    """Watched about every second through the whole first site.yml: each port opened for the trusted
    controller at some moment, and the outsider never once connected (the firewall came first)."""
    seen = swarm_lab.first_run_ports
    opened = {e["target"] for e in seen["trusted"] if e["open"]}
    assert opened == set(kit_ports(swarm_lab.lab)), seen["trusted"]
    assert [e for e in seen["outsider"] if e["open"]] == [], seen["outsider"]


def test_rendered_units_verify_cleanly_and_are_hardened(swarm_lab: SwarmLab) -> None:
    # Every unit file the roles installed, checked where it runs (ExecStart must exist there).
    script = (
        'cd /etc/systemd/system && for u in petals-*; do [ -f "$u" ] || continue; '
        'echo "== $u"; systemd-analyze verify --man=no "$u" 2>&1; '
        'case "$u" in *.service) i="${u/@./@1.}"; '
        f'systemd-analyze security --no-pager --threshold={SECURITY_THRESHOLD} "$i" >/dev/null '
        '2>&1 || echo "security above threshold: $i";; esac; done'
    )
    seen = set()
    for host in SERVER_HOSTS:
        out = swarm_lab.lab.ssh(host, script, check=True).stdout
        for block in out.split("== ")[1:]:
            name, _, problems = block.partition("\n")
            seen.add(name)
            assert problems.strip() == "", f"{host} {name}:\n{problems}"
    assert {
        "petals-dht-bootstrap.service", "petals-server@.service", "petals-firewall.service",
        "petals-health.service", "petals-gateway.service", "petals-bot.service",
        "petals-public-contributor@.service", "petals-public-contributor.target",
        "petals-public-contributor-stop.service", "petals-public-contributor-start.timer",
        "petals-public-contributor-stop.timer",
    } <= seen  # fmt: skip


def test_public_contributor_is_isolated_and_waits_for_its_window(swarm_lab: SwarmLab) -> None:
    lab = swarm_lab.lab
    target = swarm_lab.unit(PUBLIC_HOST, "petals-public-contributor.target", "ActiveState")
    assert target["ActiveState"] == "inactive"
    for timer in ("start", "stop"):
        unit = swarm_lab.unit(
            PUBLIC_HOST, f"petals-public-contributor-{timer}.timer", "ActiveState",
            "NextElapseUSecRealtime",
        )  # fmt: skip
        assert unit["ActiveState"] == "active" and unit["NextElapseUSecRealtime"], unit
    # Its user cannot read the private swarm's configuration or identities.
    for path in ("/etc/petals/swarm.toml", "/var/lib/petals/identities/server-0.id"):
        res = lab.ssh(PUBLIC_HOST, f"runuser -u petals-public -- cat {path}")
        assert res.returncode != 0 and "Permission denied" in res.stderr, path
    owner = lab.ssh(PUBLIC_HOST, "stat -c '%U %a' /var/lib/petals-public/identity-1.id").stdout
    assert owner.split() == ["petals-public", "600"]
    unit = swarm_lab.unit(
        PUBLIC_HOST, "petals-public-contributor@1.service", "User", "ExecStart", "Environment",
        "InaccessiblePaths",
    )  # fmt: skip
    assert unit["User"] == "petals-public"
    # It joins the stand-in public swarm only; nothing of the private swarm is on its command line.
    assert swarm_lab.stand_in.multiaddr in unit["ExecStart"]
    private = tomllib.loads(swarm_lab.swarm_toml.read_text())["swarm"]
    for peer in [*private["initial_peers"], *private["trusted_servers"]]:
        assert peer.rsplit("/", 1)[-1] not in unit["ExecStart"], peer
    assert "PETALS_" not in unit["Environment"]
    assert "CUDA_VISIBLE_DEVICES=1" in unit["Environment"]
    assert "/etc/petals" in unit["InaccessiblePaths"]


def test_bot_token_comes_from_the_vault_and_is_never_logged(swarm_lab: SwarmLab) -> None:
    lab = swarm_lab.lab
    token_file = lab.ssh(
        SERVICE_HOST, "stat -c '%U %a' /etc/petals/bot-token; cat /etc/petals/bot-token"
    )
    assert token_file.stdout.splitlines() == ["root 600", swarm_lab.bot_token]
    assert swarm_lab.bot_token not in lab.ssh(SERVICE_HOST, "cat /etc/petals/bot.env").stdout
    for run in swarm_lab.runs.values():
        assert swarm_lab.bot_token not in run.stdout + run.stderr
    unit = lab.ssh(SERVICE_HOST, "systemctl cat petals-bot.service", check=True).stdout
    assert "\nLoadCredential=discord-token:/etc/petals/bot-token\n" in unit
    # The credential as the bot's user gets it passes the bot's own check (mode 0600 or stricter).
    read = (
        "systemd-run --wait --pipe --quiet -p User=petals "
        "-p LoadCredential=discord-token:/etc/petals/bot-token /opt/petals/venv/bin/python -c "
        "'import os, pathlib; from bot.settings import read_secret_file; "
        'print(read_secret_file(pathlib.Path(os.environ["CREDENTIALS_DIRECTORY"], '
        '"discord-token"), "token"))\''
    )
    assert lab.ssh(SERVICE_HOST, read).stdout.strip() == swarm_lab.bot_token


def test_the_bot_logs_in_with_the_vaulted_token_and_answers_through_the_swarm(
    swarm_lab: SwarmLab,
) -> None:
    """The deployed bot (its own user, the token as a systemd credential) identified on the fake
    Discord with the vaulted token (the fake closes the gateway on any other), registered its
    slash commands, and answers a student's question through the private swarm."""
    lab = swarm_lab.lab
    state = swarm_lab.discord.request(cmd="state")
    assert state.get("connected") is True, (state, swarm_lab.discord.log.read_text()[-2000:])
    assert len(state["identifies"]) >= 1
    assert {"ask", "status"} <= set(state["commands"]), state["commands"]
    unit = swarm_lab.unit(SERVICE_HOST, "petals-bot.service", "ActiveState", "User", "NRestarts")
    assert unit == {"ActiveState": "active", "User": "petals-bot", "NRestarts": "0"}
    answer = swarm_lab.discord.request(cmd="ask", text="What is a transformer block?", timeout=300)
    journal = lab.ssh(SERVICE_HOST, "journalctl -u petals-bot --no-pager -n 40 | cut -c1-300")
    assert "reply" in answer, (answer, journal.stdout)
    # An answer written by the swarm, besides the footer the bot adds when it is done.
    assert answer["text"] and not answer["text"].startswith("🧠"), answer["reply"]
    assert swarm_lab.bot_token not in journal.stdout


def test_a_pypi_mode_host_installs_the_runtime_from_the_package_index(swarm_lab: SwarmLab) -> None:
    """petals_runtime_source: pypi on one server host, pointed at the lab's index (the wheelhouse
    served over HTTP): that host fetched the pinned stack from the index, the others never asked
    it, and its venv holds the pinned versions (its server's blocks are among those the other
    tests find served)."""
    lab = swarm_lab.lab
    requests = swarm_lab.package_index.requests()
    by_host: dict[str, set[tuple[int, str]]] = {}
    for client, status, path in requests:
        by_host.setdefault(client, set()).add((status, urllib.parse.unquote(path)))
    assert set(by_host) == {lab.ip(PYPI_HOST)}, sorted(by_host)
    fetched = by_host[lab.ip(PYPI_HOST)]
    pages = {path for status, path in fetched if status == 200 and path.startswith("/simple/")}
    assert {"/simple/torch/", "/simple/hivemind/", "/simple/petals/"} <= pages, sorted(pages)
    wheels = {Path(path).name.split("-")[0] for status, path in fetched if status == 200}
    assert {"torch", "hivemind", "petals", "transformers"} <= wheels, sorted(wheels)
    freeze = lab.ssh(PYPI_HOST, "/opt/petals/venv/bin/python -m pip freeze", check=True).stdout
    pins = {line.split("==")[0].lower(): line for line in freeze.splitlines() if "==" in line}
    constraints = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    wanted = {line.split("==")[0].lower(): line for line in constraints if "==" in line}
    for name in ("petals", "hivemind", "transformers"):
        assert pins[name] == wanted[name], (pins.get(name), wanted[name])
    assert pins["torch"].startswith(wanted["torch"]), (pins["torch"], wanted["torch"])


def test_monitoring_files_pass_promtool(swarm_lab: SwarmLab, tmp_path: Path) -> None:
    found = {name: shutil.which(name) for name in ("promtool", "amtool")}
    tools = {name: path for name, path in found.items() if path}
    if len(tools) != len(found):
        pytest.fail("promtool/amtool missing: run scripts/monitoring-deps.sh", pytrace=False)
    lab = swarm_lab.lab
    files = {
        "prometheus.yml": "/etc/prometheus/prometheus.yml",
        "rules.yml": "/etc/prometheus/rules/petals-alerts.yml",
        "alertmanager.yml": "/etc/prometheus/alertmanager.yml",
    }
    for name, path in files.items():
        (tmp_path / name).write_text(lab.ssh(SERVICE_HOST, f"cat {path}", check=True).stdout)
    checks = [
        [tools["promtool"], "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")],
        [tools["promtool"], "check", "rules", str(tmp_path / "rules.yml")],
        [tools["amtool"], "check-config", str(tmp_path / "alertmanager.yml")],
    ]
    for cmd in checks:
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, (cmd, res.stdout, res.stderr)
    prometheus = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    health = f"{lab.ip(SERVICE_HOST)}:9160"
    assert jobs["petals-health"]["static_configs"] == [{"targets": [health]}]
    # The gateway listens on loopback behind caddy: scraped through TLS, checked against the CA.
    assert jobs["petals-gateway"]["static_configs"] == [
        {"targets": [f"{lab.ip(SERVICE_HOST)}:8443"]}
    ]
    assert jobs["petals-gateway"]["scheme"] == "https"
    ca_file = "/etc/prometheus/petals-gateway-ca.pem"
    assert jobs["petals-gateway"]["tls_config"] == {"ca_file": ca_file}
    assert jobs["petals-bot"]["static_configs"] == [{"targets": [f"{lab.ip(SERVICE_HOST)}:8095"]}]
    nodes = yaml.safe_load(lab.ssh(SERVICE_HOST, "cat /etc/prometheus/file_sd/node.yml").stdout)
    assert sorted(t for entry in nodes for t in entry["targets"]) == sorted(
        f"{lab.ip(h)}:9100" for h in {*SERVER_HOSTS, SERVICE_HOST, PUBLIC_HOST}
    )
    alertmanager = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())
    hooks = [h["url"] for r in alertmanager["receivers"] for h in r.get("webhook_configs", [])]
    # Every receiver (Discord, and the Watchdog's dead-man's-switch route) posts to the webhook
    # the inventory names: the lab's sink instead of the bot.
    assert len(hooks) == len(alertmanager["receivers"]) >= 2
    assert set(hooks) == {swarm_lab.alert_sink.url}


def test_services_run_as_their_own_users_and_cannot_read_server_keys(swarm_lab: SwarmLab) -> None:
    lab = swarm_lab.lab
    # SERVICE_HOST is also a GPU server: its server-0 key lives next to these services.
    for user in ("petals-health", "petals-gateway", "petals-bot"):
        key = lab.ssh(
            SERVICE_HOST, f"runuser -u {user} -- cat /var/lib/petals/identities/server-0.id"
        )
        assert key.returncode != 0 and "Permission denied" in key.stderr, (user, key.stderr)
        toml = lab.ssh(SERVICE_HOST, f"runuser -u {user} -- cat /etc/petals/swarm.toml")
        assert toml.returncode == 0, (user, toml.stderr)
    if swarm_lab.health:
        unit = swarm_lab.unit(SERVICE_HOST, "petals-health.service", "MainPID", "ActiveState")
        assert unit["ActiveState"] == "active", unit
        user = lab.ssh(SERVICE_HOST, f"ps -o user= -p {unit['MainPID']}").stdout.strip()
        assert user == "petals-health"


def _assert_nothing_changed(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    changed = {host: counts["changed"] for host, counts in parse_recap(res.stdout).items()}
    assert changed, res.stdout[-3000:]
    task, which = "", []
    for line in res.stdout.splitlines():  # name the tasks that changed (or would) something
        if line.startswith("TASK ["):
            task = line.split("]")[0] + "]"
        elif line.startswith("changed: ["):
            which.append(f"{task} {line.split(']')[0]}]")
    assert changed == dict.fromkeys(changed, 0), which


def test_check_mode_on_the_converged_lab_changes_nothing(swarm_lab: SwarmLab) -> None:
    _assert_nothing_changed(swarm_lab.playbook("site.yml", "--check", "--diff"))


def test_the_configure_tag_alone_runs_and_changes_nothing(swarm_lab: SwarmLab) -> None:
    """An operator's `--tags configure` (files only, after editing group_vars) runs for real on
    every host of the converged lab: the facts it needs come with it, and nothing changes."""
    res = swarm_lab.playbook("site.yml", "--tags", "configure")
    _assert_nothing_changed(res)
    assert "Write Prometheus' configuration" in res.stdout


def _prometheus(swarm_lab: SwarmLab, path: str) -> Any:
    """GET Prometheus' HTTP API on the monitoring host, from the controller (a trusted address)."""
    url = f"http://{swarm_lab.lab.ip(SERVICE_HOST)}:9090{path}"
    res = swarm_lab.lab.run_controller(["curl", "-sS", "-m", "20", "-g", url], timeout=60)
    assert res.returncode == 0, (url, res.stderr)
    doc = json.loads(res.stdout)
    assert doc["status"] == "success", doc
    return doc["data"]


def test_prometheus_scrapes_health_nodes_gateway_and_bot(swarm_lab: SwarmLab) -> None:
    """The distribution's Prometheus, started by the role, scrapes every service of the kit."""
    lab = swarm_lab.lab
    nodes = {f"{lab.ip(h)}:9100" for h in {*SERVER_HOSTS, SERVICE_HOST, PUBLIC_HOST}}
    want_up = {
        ("petals-health", f"{lab.ip(SERVICE_HOST)}:9160"),
        ("petals-gateway", f"https://{lab.ip(SERVICE_HOST)}:8443/metrics"),
        ("petals-bot", f"{lab.ip(SERVICE_HOST)}:8095"),
        ("alertmanager", "127.0.0.1:9093"),
        ("prometheus", "127.0.0.1:9090"),
        *(("node", target) for target in nodes),
    }
    deadline = time.monotonic() + 180
    while True:  # a fresh Prometheus needs a scrape or two (every 2 s here)
        active = _prometheus(swarm_lab, "/api/v1/targets?state=active")["activeTargets"]
        seen = {
            (t["labels"]["job"], t["scrapeUrl"] if t["labels"]["job"] == "petals-gateway"
             else t["labels"]["instance"]): (t["health"], t["lastError"])
            for t in active
        }  # fmt: skip
        up = {key for key, (health, _) in seen.items() if health == "up"}
        if want_up <= up or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert want_up <= up, {key: seen.get(key, "not a target") for key in want_up - up}
    # node_exporter reports the host it runs on: one distinct machine per target.
    uname = _prometheus(swarm_lab, "/api/v1/query?query=node_uname_info")["result"]
    assert {r["metric"]["nodename"] for r in uname} >= {*SERVER_HOSTS, SERVICE_HOST}


def test_an_alert_goes_through_alertmanager_to_the_webhook(swarm_lab: SwarmLab) -> None:
    """Prometheus evaluates the kit's rules and Alertmanager delivers: the always-firing Watchdog
    reaches the lab's webhook sink in Alertmanager's webhook format (version 4)."""
    deadline = time.monotonic() + 240
    while True:
        calls = swarm_lab.alert_sink.received()
        watchdog = [
            c for c in calls
            if any(a["labels"].get("alertname") == "Watchdog" for a in c["body"]["alerts"])
        ]  # fmt: skip
        if watchdog or time.monotonic() > deadline:
            break
        time.sleep(2)
    alerts = _prometheus(swarm_lab, "/api/v1/alerts")["alerts"]
    assert watchdog, {"sink": calls, "prometheus alerts": alerts}
    call = watchdog[0]
    assert call["path"] == "/alertmanager"
    body = call["body"]
    assert body["version"] == "4" and body["status"] == "firing", body
    assert body["receiver"] == "petals-watchdog", body
    assert body["alerts"][0]["status"] == "firing"
    assert any(a["labels"]["alertname"] == "Watchdog" and a["state"] == "firing" for a in alerts)
    # The rules carry the inventory's replication target, and no coverage alert is firing on
    # the converged swarm.
    target = _prometheus(swarm_lab, "/api/v1/query?query=petals:threshold:replication_target")
    assert [float(r["value"][1]) for r in target["result"]] == [float(REPLICATION)]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    assert not firing & {"PetalsBlockUncovered", "PetalsCollectorStale"}, alerts


GATEWAY_CLIENT = """
import json, sys
import httpx, openai
url, token, ca = sys.argv[1:4]
client = openai.OpenAI(
    base_url=url, api_key=token, http_client=httpx.Client(verify=ca), max_retries=0
)
model = client.models.list().data[0].id
reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
)
try:
    openai.OpenAI(base_url=url, api_key="wrong", http_client=httpx.Client(verify=ca),
                  max_retries=0).models.list()
    wrong = None
except openai.AuthenticationError as exc:
    wrong = exc.status_code
print(json.dumps({"model": model, "usage": reply.usage.model_dump(),
                  "finish": reply.choices[0].finish_reason, "wrong_token": wrong}))
"""


def test_gateway_answers_the_openai_client_over_tls(swarm_lab: SwarmLab) -> None:
    """The official openai package, checking the certificate against the lab's CA, gets an answer
    from the private swarm through caddy; plain HTTP to the gateway's port is not served."""
    lab = swarm_lab.lab
    address = lab.ip(SERVICE_HOST)
    res = lab.run_controller(
        [sys.executable, "-c", GATEWAY_CLIENT, f"https://{address}:8443/v1",
         swarm_lab.gateway_token, str(swarm_lab.gateway_tls["ca.crt"])],
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["usage"]["completion_tokens"] >= 1, doc
    assert doc["wrong_token"] == 401, doc
    # The gateway itself listens on loopback only: its port is closed on the host's address.
    plain = lab.run_controller(["curl", "-sS", "-m", "10", f"http://{address}:8000/healthz"])
    assert plain.returncode != 0, plain.stdout
    # A client that does not trust the lab's CA is refused the connection.
    untrusted = lab.run_controller(["curl", "-sS", "-m", "10", f"https://{address}:8443/healthz"])
    # (60: the certificate is not trusted; 77: curl finds no CA bundle to trust at all)
    assert untrusted.returncode in (60, 77), (untrusted.returncode, untrusted.stderr)
