"""The NVML GPU exporter against a faithful fake of NVML (no GPU here): dcgm-exporter's names,
units and labels, XID events, a GPU that falls off the bus, promtool's lint, and the names the
GPU alerts use; `petalctl gpu-exporter` on this GPU-less host says so in one line and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitoring.gpu_exporter import GpuExporter, NvmlUnavailable
from tests.monitoring.conftest import MONITORING, REPO
from tests.monitoring.fake_nvml import FakeGpu, FakeNvml
from tests.monitoring.procs import require_binary, wait_until
from tests.monitoring.promql import metric_names

pytestmark = pytest.mark.monitoring

HOST_RULES = MONITORING / "prometheus" / "rules" / "host-alerts.yml"
MIB = 1024 * 1024


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu("GPU-0aaa", minor=0, memory_used=30_000 * MIB, power_mw=61_234),
            FakeGpu("GPU-1bbb", minor=1, name="NVIDIA GeForce RTX 4090", temperature_c=88,
                    ecc_corrected=None, ecc_uncorrected=None),
        ]
    )  # fmt: skip


@pytest.fixture
def exporter(nvml: FakeNvml):
    exporter = GpuExporter(nvml=nvml, hostname="gorina7")
    yield exporter
    exporter.close()
    assert nvml.initialized == 0, "NVML shut down as often as it was started"


def samples(exporter: GpuExporter) -> dict[tuple[str, str], float]:
    """(metric name, UUID) -> value."""
    text = exporter.exposition().decode()
    return {
        (s.name, s.labels["UUID"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_dcgm_names_units_and_labels(exporter: GpuExporter):
    text = exporter.exposition().decode()
    values = samples(exporter)

    assert values[("DCGM_FI_DEV_GPU_TEMP", "GPU-0aaa")] == 41
    assert values[("DCGM_FI_DEV_FB_USED", "GPU-0aaa")] == 30_000  # MiB, as dcgm-exporter
    assert values[("DCGM_FI_DEV_FB_FREE", "GPU-0aaa")] == 40_960 - 30_000
    assert values[("DCGM_FI_DEV_POWER_USAGE", "GPU-0aaa")] == pytest.approx(61.234)  # W
    assert values[("DCGM_FI_DEV_GPU_UTIL", "GPU-0aaa")] == 37
    assert values[("DCGM_FI_DEV_MEM_COPY_UTIL", "GPU-0aaa")] == 12
    assert values[("DCGM_FI_DEV_SM_CLOCK", "GPU-0aaa")] == 1410
    assert values[("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "GPU-0aaa")] == 0
    assert values[("DCGM_FI_DEV_XID_ERRORS", "GPU-0aaa")] == 0
    # A GPU without ECC has no ECC series, rather than a misleading 0.
    assert ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "GPU-1bbb") not in values
    assert values[("DCGM_FI_DEV_GPU_TEMP", "GPU-1bbb")] == 88

    families = {f.name: f for f in text_string_to_metric_families(text)}
    temp = families["DCGM_FI_DEV_GPU_TEMP"]
    assert temp.type == "gauge" and temp.documentation == "GPU temperature (in C)."
    assert temp.samples[1].labels == {
        "gpu": "1", "UUID": "GPU-1bbb", "device": "nvidia1",
        "modelName": "NVIDIA GeForce RTX 4090", "Hostname": "gorina7",
    }  # fmt: skip


def test_an_xid_event_shows_as_the_last_xid_of_that_gpu(exporter: GpuExporter, nvml: FakeNvml):
    assert nvml.registered == [nvml.nvmlEventTypeXidCriticalError] * 2
    nvml.raise_xid(1, 79)

    wait_until(
        lambda: samples(exporter)[("DCGM_FI_DEV_XID_ERRORS", "GPU-1bbb")] == 79,
        timeout=10,
        what="XID 79 on GPU 1",
    )
    assert samples(exporter)[("DCGM_FI_DEV_XID_ERRORS", "GPU-0aaa")] == 0


def test_a_gpu_that_fell_off_the_bus_is_left_out(exporter: GpuExporter, nvml: FakeNvml):
    nvml.gpus[0].lost = True
    uuids = {uuid for _, uuid in samples(exporter)}
    assert uuids == {"GPU-1bbb"}  # GpuMissing notices the series that went away


def test_exposition_passes_promtool_but_for_dcgm_exporters_own_label_names(
    exporter: GpuExporter,
):
    lint = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=exporter.exposition(),
        capture_output=True,
        timeout=30,
    )
    findings = (lint.stdout + lint.stderr).decode().splitlines()
    families = {f.name for f in text_string_to_metric_families(exporter.exposition().decode())}
    # dcgm-exporter's label "modelName" is camelCase, and the alerts and dashboards written for
    # dcgm-exporter select on it; that is promtool's only finding, once per family.
    expected = {f"{name} label names should be written in 'snake_case' not 'camelCase'"
                for name in families}  # fmt: skip
    assert set(findings) == expected, findings
    assert lint.returncode in (0, 3), findings  # 3: lint findings only, no parse error


def test_every_gpu_metric_the_alerts_use_is_exported(exporter: GpuExporter):
    exported = {f.name for f in text_string_to_metric_families(exporter.exposition().decode())}
    used = set()
    for group in yaml.safe_load(HOST_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used |= {n for n in metric_names(rule["expr"]) if n.startswith("DCGM_")}
    assert used, "the GPU alerts use dcgm-exporter names"
    assert used <= exported, f"alerts use names the exporter lacks: {used - exported}"


def test_no_driver_is_nvml_unavailable():
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        GpuExporter(nvml=FakeNvml([], driver_loaded=False))
    with pytest.raises(NvmlUnavailable, match="no GPU"):
        GpuExporter(nvml=FakeNvml([]))


def test_cli_on_a_host_without_nvidia_says_so_and_exits_0():
    # This machine has no NVIDIA driver: the real pynvml cannot load libnvidia-ml.so.
    result = subprocess.run(
        [sys.executable, "-m", "petalctl.main", "gpu-exporter", "--host", "127.0.0.1",
         "--port", "9499"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and re.match(r"petalctl gpu-exporter: no NVIDIA GPU", lines[0]), lines
