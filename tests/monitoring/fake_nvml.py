"""A faithful fake of NVML's Python API (nvidia-ml-py's ``pynvml``) for a machine without a GPU.

Same function names, arguments and units as the real binding (bytes, milliwatts, degrees C, %),
the real module's constants, and errors raised as the real ``pynvml.NVMLError`` with NVML's own
return codes (so ``NVMLError(NVML_ERROR_GPU_IS_LOST)`` is the same subclass the library raises).
Only what a test sets up exists: GPUs, fields a GPU does not support, a GPU falling off the bus,
XID events queued for ``nvmlEventSetWait_v2``.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any

import pynvml


@dataclasses.dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA A100-SXM4-40GB"
    minor: int = 0
    temperature_c: int = 41
    power_mw: int = 61_234
    util_gpu: int = 37
    util_memory: int = 12
    memory_total: int = 40_960 * 1024 * 1024  # bytes, as nvmlDeviceGetMemoryInfo reports
    memory_used: int = 30_000 * 1024 * 1024
    sm_clock_mhz: int = 1410
    mem_clock_mhz: int = 1215
    ecc_corrected: int | None = 0  # None: the GPU has no ECC (NOT_SUPPORTED), like a GeForce
    ecc_uncorrected: int | None = 0
    lost: bool = False  # fallen off the bus: every call answers GPU_IS_LOST


@dataclasses.dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclasses.dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclasses.dataclass
class _EventData:
    device: Any
    eventType: int
    eventData: int
    gpuInstanceId: int = 0
    computeInstanceId: int = 0


class FakeNvml:
    """Pass as the ``nvml`` module: ``GpuExporter(nvml=FakeNvml([FakeGpu(...)]))``."""

    def __init__(self, gpus: list[FakeGpu], *, driver_loaded: bool = True) -> None:
        self.gpus = gpus
        self.driver_loaded = driver_loaded
        self.initialized = 0
        self.registered: list[int] = []
        self._events: queue.Queue[_EventData] = queue.Queue()
        self._lock = threading.Lock()
        for name in dir(pynvml):
            if name.startswith(("NVML_", "nvmlEventType")):
                setattr(self, name, getattr(pynvml, name))
        self.NVMLError = pynvml.NVMLError

    # -- test controls ---------------------------------------------------------------------------
    def raise_xid(self, index: int, xid: int) -> None:
        self._events.put(_EventData(self.gpus[index], pynvml.nvmlEventTypeXidCriticalError, xid))

    # -- NVML's API --------------------------------------------------------------------------------
    def _check_init(self) -> None:
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: FakeGpu) -> FakeGpu:
        self._check_init()
        if handle.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return handle

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._check_init()
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetMinorNumber(self, handle: FakeGpu) -> int:
        return self._gpu(handle).minor

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle).temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle).power_mw

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> _Utilization:
        gpu = self._gpu(handle)
        return _Utilization(gpu.util_gpu, gpu.util_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> _Memory:
        gpu = self._gpu(handle)
        return _Memory(gpu.memory_total, gpu.memory_total - gpu.memory_used, gpu.memory_used)

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, clock: int) -> int:
        gpu = self._gpu(handle)
        clocks = {pynvml.NVML_CLOCK_SM: gpu.sm_clock_mhz, pynvml.NVML_CLOCK_MEM: gpu.mem_clock_mhz}
        if clock not in clocks:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return clocks[clock]

    def nvmlDeviceGetTotalEccErrors(
        self, handle: FakeGpu, error_type: int, counter_type: int
    ) -> int:
        gpu = self._gpu(handle)
        if counter_type not in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        value = {
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: gpu.ecc_corrected,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: gpu.ecc_uncorrected,
        }[error_type]
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlEventSetCreate(self) -> object:
        self._check_init()
        return object()

    def nvmlDeviceRegisterEvents(
        self, handle: FakeGpu, event_types: int, event_set: object
    ) -> None:
        self._gpu(handle)
        self.registered.append(event_types)

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> _EventData:
        self._check_init()
        try:
            return self._events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT) from None

    def nvmlEventSetFree(self, event_set: object) -> None:
        pass
