"""Device and precision policy: the device a run uses, its autocast dtype, and what the machine is.

Nothing here runs at import time: the device is decided when a run starts, from its config
(``TrainConfig.device`` and ``TrainConfig.amp``), so the same code behaves the same in a test,
a notebook and a Ray actor.
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any, Literal, Optional

import torch

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
AMP_CHOICES: tuple[str, ...] = ("auto", "off", "fp16", "bf16")


class DeviceUnavailableError(RuntimeError):
    """An explicitly requested device (or a precision on it) is not available on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def detect_device(override: str = "auto") -> torch.device:
    """The device a run should use.

    ``"auto"`` picks MPS if available, else CUDA, else CPU (the seed project's order; a machine
    has at most one of MPS and CUDA in practice). An explicit ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or ``"mps"`` is honoured or refused: silently falling back to the CPU would
    turn a GPU sweep into a days-long CPU one.

    Raises:
        ValueError: ``override`` is not one of ``auto | cpu | cuda[:N] | mps``.
        DeviceUnavailableError: the requested device is not available here.
    """
    name = override.strip().lower()
    if name == "auto":
        if _mps_available():
            return torch.device("mps")
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    kind, _, index = name.partition(":")
    if kind not in DEVICE_CHOICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(
            f"unknown device {override!r}; expected one of {', '.join(DEVICE_CHOICES)} "
            "(or 'cuda:N' for a specific GPU)"
        )
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise DeviceUnavailableError(
                "device 'mps' requested but torch.backends.mps.is_available() is False "
                "(needs Apple silicon and a macOS build of torch); use device: auto or cpu"
            )
        return torch.device("mps")
    # cuda
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {override!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "install a CUDA build of torch or use device: auto or cpu"
        )
    if index:
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise DeviceUnavailableError(
                f"device {override!r} requested but only {count} CUDA device(s) are visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
            )
    return torch.device(name)


def _cuda_bf16_supported() -> bool:
    # including_emulation=False: pre-Ampere GPUs "support" bf16 only by emulation, which is
    # slower than fp32, so they count as unsupported here.
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the keyword
        return bool(torch.cuda.is_bf16_supported())


def _cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX) and oneDNN will use it.

    Without, autocast emulates bf16: char_best's LSTM (T 100, H 512, B 32) trained 2.4x *slower*
    than fp32 with oneDNN held to plain AVX-512 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``), and oneDNN's
    LSTM refused bf16 outright when held to AVX2 (docs/benchmarks.md, "bf16 on the CPU").
    """
    native = any(
        bool(getattr(torch.cpu, probe, lambda: False)())
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    try:
        return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


#: ``amp: auto`` on CUDA turns on bf16 autocast from this many rows per batch (see below).
AUTO_BF16_MIN_BATCH = 4096


def resolve_precision(amp: str, device: torch.device, batch_size: Optional[int] = None) -> Precision:
    """The autocast precision for a run: ``"fp32"`` (no autocast), ``"fp16"`` or ``"bf16"``.

    ``amp`` is ``TrainConfig.amp``:

    - ``"off"``: fp32.
    - ``"fp16"`` / ``"bf16"``: as asked, where it can run. fp16 on the CPU is refused (CPU
      autocast's fp16 path is neither fast nor well covered; use bf16 there), and so is bf16
      where it would be emulated and slower: a CUDA device without native bf16 (pre-Ampere),
      a CPU without AVX512-BF16 or AMX (:func:`_cpu_bf16_supported`), and MPS before macOS 14.
    - ``"auto"``: the measured-faster choice:

      - CPU and MPS: fp32 (as the seed project had it), on every CPU, so that a spec's numerics do
        not depend on which CPU ran it. On a CPU with native bf16, ``amp: bf16`` is the faster
        choice for models of char_best's size: on an AMD EPYC (Zen 4, 2 threads, T 100, E 128,
        H 512, 2 layers, B 16-64) it trained the LSTM 1.5-1.6x and the GRU 1.7-2.1x faster
        (``python -m bench.jobs jobs/throughput_amp_cpu.yaml``); set it in the spec.
      - CUDA: bf16 when ``batch_size >= AUTO_BF16_MIN_BATCH`` and the GPU has native bf16,
        else fp32; the same for plain cuDNN cells and the layer-norm LSTM. fp16 is never
        chosen automatically: it needs a GradScaler and can overflow in long recurrences.

      Measured on an H100 (torch 2.11) with ``python -m bench.jobs jobs/throughput_amp.yaml`` (then
      part of ``bench/gpu.sh``;
      T 25, E 192, H 384, 2 layers; samples/s fp32 → bf16): plain LSTM B 2048 249k → 225k,
      B 8192 365k → 564k; layer-norm LSTM B 2048 47k → 41k, B 8192 79k → 137k. A second
      measurement (E 128, H 512, T 100) agreed at B 4096 (cuDNN 61k → 90k, LN 13k → 25k).
      Below a few thousand rows the step is launch-bound and autocast's casts cost more than
      bf16 saves (the seed's shape, B 2048, is fp32). "auto" is a default, not a tuner: set
      ``amp`` explicitly, or measure with a throughput job, when speed at a shape matters.

    Raises:
        ValueError: unknown ``amp``, or fp16 on a CPU.
        DeviceUnavailableError: bf16 requested on a CPU or CUDA device without native bf16,
            or on MPS before macOS 14.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"unknown amp {amp!r}; expected one of {', '.join(AMP_CHOICES)}")
    kind = device.type
    if amp == "off":
        return "fp32"
    if amp == "fp16":
        if kind == "cpu":
            raise ValueError(
                "amp 'fp16' is not supported on the CPU; use amp: bf16 or amp: off (or auto)"
            )
        return "fp16"
    if amp == "bf16":
        if kind == "cpu" and not _cpu_bf16_supported():
            raise DeviceUnavailableError(
                f"amp 'bf16' requested but this CPU ({_cpu_name()}) has no native bf16 (AVX512-BF16 "
                "or AMX): autocast would emulate it, slower than fp32; use amp: off or auto"
            )
        if kind == "cuda" and not _cuda_bf16_supported():
            raise DeviceUnavailableError(
                f"amp 'bf16' requested but {_cuda_name(device)} has no native bf16 support "
                "(needs compute capability >= 8.0); use amp: fp16, off or auto"
            )
        if kind == "mps" and not _mps_bf16_supported():
            raise DeviceUnavailableError(
                "amp 'bf16' requested on MPS, which needs macOS 14 or newer for bf16; "
                "use amp: fp16, off or auto"
            )
        return "bf16"
    # auto
    large = batch_size is not None and batch_size >= AUTO_BF16_MIN_BATCH
    if kind == "cuda" and large and _cuda_bf16_supported():
        return "bf16"
    return "fp32"


def use_tf32(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` run in TF32, and set it so for this process.

    On CUDA with TF32 units (compute capability >= 8.0, Ampere and later) they do: cuDNN's
    ``nn.LSTM`` runs TF32 by default (``torch.backends.cudnn.allow_tf32``), so the cuBLAS matmuls
    of the layer-norm LSTM, the input projections and the head do too, or the two cells would be
    compared at different precisions (IEEE fp32 GEMMs run at a fraction of TF32's rate). TF32
    keeps fp32's range with a 10-bit mantissa, the precision PyTorch's own
    ``torch.set_float32_matmul_precision("high")`` chooses. Elsewhere (CPU, MPS, older GPUs): no
    TF32, and nothing is set.

    A run calls this when it starts (torch's switches are per process, and an actor runs many
    trials); the trial row and the throughput row record the answer as ``tf32``.
    """
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    tf32 = torch.cuda.get_device_capability(index) >= (8, 0)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return tf32


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The ``torch.autocast`` dtype for a resolved precision, or None for fp32 (autocast off)."""
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _mps_bf16_supported() -> bool:
    # MPS gained bf16 with macOS 14 (Sonoma).
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    try:
        return bool(check(14, 0)) if check is not None else False
    except Exception:  # noqa: BLE001 - an unknown OS version counts as unsupported
        return False


def _cuda_name(device: torch.device) -> str:
    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001 - a name is only for a message
        return f"CUDA device {device}"


def _cpu_name() -> str:
    # platform.processor() is empty or just "x86_64" on most Linux systems; /proc/cpuinfo
    # has the marketing name there.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _total_ram_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not on Windows
        return None


def device_report(device: Optional[torch.device] = None) -> dict[str, Any]:
    """What a run's device is, for the start event, ``cli devices`` and result records.

    Keys (prefixed where a bare name would be ambiguous once merged into a larger record):
    ``device_type``, ``device_name``, ``total_memory_bytes`` (GPU memory on CUDA; system RAM
    on the CPU and on MPS, whose memory is unified), ``bf16_supported`` (native bf16 on CUDA;
    on the CPU autocast bf16 always runs, natively fast only with AVX512-BF16/AMX - see
    ``cpu_capability``), ``torch_version``, ``cuda_version``, ``cudnn_version``, ``cpu_count``,
    ``cpu_capability``, ``num_threads`` and ``num_interop_threads``. CUDA adds
    ``compute_capability`` and ``device_count``.

    ``device=None`` reports the device ``detect_device("auto")`` would pick.
    """
    device = detect_device("auto") if device is None else torch.device(device)
    report: dict[str, Any] = {"device_type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        report.update(
            device_name=props.name,
            total_memory_bytes=int(props.total_memory),
            bf16_supported=_cuda_bf16_supported(),
            compute_capability=f"{props.major}.{props.minor}",
            device_count=torch.cuda.device_count(),
        )
    elif device.type == "mps":
        get_name = getattr(torch.backends.mps, "get_name", None)
        try:
            name = f"Apple MPS ({get_name()})" if get_name else "Apple MPS"
        except Exception:  # noqa: BLE001 - best-effort name
            name = "Apple MPS"
        report.update(
            device_name=name,
            total_memory_bytes=_total_ram_bytes(),
            bf16_supported=_mps_bf16_supported(),
        )
    else:
        report.update(
            device_name=_cpu_name(), total_memory_bytes=_total_ram_bytes(),
            bf16_supported=_cpu_bf16_supported(),
        )

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    report.update(
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        cudnn_version=cudnn,
        cpu_count=os.cpu_count(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        num_threads=torch.get_num_threads(),
        num_interop_threads=torch.get_num_interop_threads(),
    )
    return report
