"""GPU health for Prometheus with dcgm-exporter's metric names, read through NVIDIA's NVML binding.

Where dcgm-exporter (and DCGM) cannot be installed, ``petalctl gpu-exporter`` serves the same
families — names, HELP texts, units (MiB, W, C, %, MHz) and the labels gpu, UUID, device,
modelName and Hostname — so the kit's GPU alerts and dashboard work with either exporter. NVML is
read at scrape time; XID errors arrive as NVML events on a thread of their own (dcgm-exporter's
DCGM_FI_DEV_XID_ERRORS is the value of the last XID seen since the exporter started).

A GPU that NVML reports as lost (fallen off the bus) is left out of the exposition, as
dcgm-exporter does; the GpuMissing alert notices the series that went away. The ``nvml`` module is
a parameter so tests can hand in a fake of the library's API (there is no GPU on the test machine).

Errors: ``NvmlUnavailable`` (no NVIDIA driver, library or GPU on this host).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")  # dcgm-exporter's, in its order
MIB = 1024 * 1024


class NvmlUnavailable(Exception):
    """No NVIDIA driver, NVML library or GPU on this host."""


def _text(value: str | bytes) -> str:
    # Older NVML bindings return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    help: str
    read: Callable[[Any, Any], float]


def _fields(nvml: Any) -> tuple[Field, ...]:
    def ecc(error_type: int) -> Callable[[Any, Any], float]:
        return lambda n, h: n.nvmlDeviceGetTotalEccErrors(h, error_type, n.NVML_VOLATILE_ECC)

    return (
        Field("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).",
              lambda n, h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
        Field("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).",
              lambda n, h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
        Field("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).",
              lambda n, h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
        Field("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).",
              lambda n, h: n.nvmlDeviceGetPowerUsage(h) / 1000),  # NVML: milliwatts
        Field("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).",
              lambda n, h: n.nvmlDeviceGetUtilizationRates(h).gpu),
        Field("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).",
              lambda n, h: n.nvmlDeviceGetUtilizationRates(h).memory),
        Field("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).",
              lambda n, h: n.nvmlDeviceGetMemoryInfo(h).free / MIB),  # NVML: bytes
        Field("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).",
              lambda n, h: n.nvmlDeviceGetMemoryInfo(h).used / MIB),
        Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.",
              ecc(nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED)),
        Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.",
              ecc(nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)),
    )  # fmt: skip


XID_FIELD = ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.")


@dataclasses.dataclass(frozen=True)
class GpuReading:
    """One GPU's labels and the values NVML gave (a field it does not support is absent)."""

    labels: tuple[str, ...]
    values: dict[str, float]


def _error_code(nvml: Any, exc: BaseException) -> int | None:
    return getattr(exc, "value", None) if isinstance(exc, nvml.NVMLError) else None


def init(nvml: Any) -> None:
    """Load NVML; ``NvmlUnavailable`` names why not (no library, no driver, no GPU)."""
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML cannot start: {exc}") from None
    except OSError as exc:  # a broken libnvidia-ml.so
        raise NvmlUnavailable(f"NVML cannot be loaded: {exc}") from None
    if count == 0:
        nvml.nvmlShutdown()
        raise NvmlUnavailable("the NVIDIA driver reports no GPU")


def read_gpus(nvml: Any, hostname: str, last_xid: dict[str, int]) -> list[GpuReading]:
    """Every GPU NVML can still reach, with its labels and values (I/O through ``nvml``)."""
    readings = []
    fields = _fields(nvml)
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            labels = (
                str(index),
                uuid,
                f"nvidia{nvml.nvmlDeviceGetMinorNumber(handle)}",
                _text(nvml.nvmlDeviceGetName(handle)),
                hostname,
            )
        except nvml.NVMLError as exc:
            # GPU_IS_LOST (off the bus) or worse: leave it out; GpuMissing sees the gap.
            log.warning("GPU %d cannot be read: %s", index, exc)
            continue
        values: dict[str, float] = {}
        for field in fields:
            try:
                values[field.name] = float(field.read(nvml, handle))
            except nvml.NVMLError as exc:
                if _error_code(nvml, exc) == nvml.NVML_ERROR_GPU_IS_LOST:
                    values = {}
                    break
                if _error_code(nvml, exc) != nvml.NVML_ERROR_NOT_SUPPORTED:
                    log.warning("GPU %d: %s failed: %s", index, field.name, exc)
        if not values:
            log.warning("GPU %d (%s) is lost; leaving it out", index, uuid)
            continue
        values[XID_FIELD[0]] = float(last_xid.get(uuid, 0))
        readings.append(GpuReading(labels, values))
    return readings


def gpu_families(nvml: Any, readings: Iterable[GpuReading]) -> Iterator[Metric]:
    """dcgm-exporter's gauge families for the readings (pure)."""
    readings = list(readings)
    docs = [(f.name, f.help) for f in _fields(nvml)] + [XID_FIELD]
    for name, doc in docs:
        family = GaugeMetricFamily(name, doc, labels=list(LABELS))
        for reading in readings:
            if name in reading.values:
                family.add_metric(list(reading.labels), reading.values[name])
        yield family


class XidWatcher:
    """Waits for NVML's XID events on a thread and keeps the last XID per GPU UUID."""

    def __init__(self, nvml: Any, wait_ms: int = 1000) -> None:
        self._nvml = nvml
        self._wait_ms = wait_ms
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None

    def last_xid(self) -> dict[str, int]:
        with self._lock:
            return dict(self._last)

    def start(self) -> None:
        nvml = self._nvml
        self._event_set = nvml.nvmlEventSetCreate()
        registered = 0
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                nvml.nvmlDeviceRegisterEvents(
                    handle, nvml.nvmlEventTypeXidCriticalError, self._event_set
                )
                registered += 1
            except nvml.NVMLError as exc:
                log.warning("GPU %d: no XID events (%s)", index, exc)
        if registered:
            self._thread = threading.Thread(target=self._run, name="xid-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stopping.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, self._wait_ms)
            except nvml.NVMLError as exc:
                if _error_code(nvml, exc) != nvml.NVML_ERROR_TIMEOUT:
                    log.warning("waiting for XID events failed: %s", exc)
                    self._stopping.wait(self._wait_ms / 1000)
                continue
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(data.device))
            except nvml.NVMLError:
                continue
            log.warning("GPU %s reported XID %d", uuid, data.eventData)
            with self._lock:
                self._last[uuid] = int(data.eventData)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._wait_ms / 1000 + 5)
        if self._event_set is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlEventSetFree(self._event_set)


class GpuCollector(Collector):
    """Reads NVML at scrape time and formats dcgm-exporter's families."""

    def __init__(self, nvml: Any, xids: XidWatcher, hostname: str | None = None) -> None:
        self._nvml = nvml
        self._xids = xids
        self._hostname = hostname or socket.gethostname()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        readings = read_gpus(self._nvml, self._hostname, self._xids.last_xid())
        return gpu_families(self._nvml, readings)


class GpuExporter:
    """NVML started, XID events watched, and a registry to serve; ``close()`` undoes it all."""

    def __init__(self, nvml: Any = None, hostname: str | None = None) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:  # nvidia-ml-py not installed
                raise NvmlUnavailable(f"nvidia-ml-py is not installed: {exc}") from None
            nvml = pynvml
        self.nvml: Any = nvml
        init(nvml)
        self.xids = XidWatcher(nvml)
        self.xids.start()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(GpuCollector(nvml, self.xids, hostname))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.xids.stop()
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()
