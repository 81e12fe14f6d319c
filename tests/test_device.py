"""Device and precision policy.

The CPU paths run for real. MPS and CUDA are not present on the test machine, so their
availability checks are monkeypatched: that exercises the policy (order, errors, precision
per device), not the hardware. So is the CPU's native-bf16 probe, in the fixture; one test runs
it for real, with oneDNN held to AVX2.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from rnn import device as dev
from rnn.device import (
    AUTO_BF16_MIN_BATCH,
    DeviceUnavailableError,
    autocast_dtype,
    detect_device,
    device_report,
    resolve_precision,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
MPS = torch.device("mps")


@pytest.fixture
def machine(monkeypatch):
    """Set which accelerators this 'machine' has: machine(mps=..., cuda=..., cuda_bf16=..., cpu_bf16=...)."""

    def set_(mps: bool = False, cuda: bool = False, cuda_bf16: bool = True, macos14: bool = True,
             cpu_bf16: bool = True):
        monkeypatch.setattr(dev, "_cpu_bf16_supported", lambda: cpu_bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if cuda else 0)
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda and cuda_bf16
        )
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)

    return set_


@pytest.mark.parametrize(
    ("mps", "cuda", "expected"),
    [(True, True, "mps"), (True, False, "mps"), (False, True, "cuda"), (False, False, "cpu")],
)
def test_auto_prefers_mps_then_cuda_then_cpu(machine, mps, cuda, expected):
    machine(mps=mps, cuda=cuda)
    assert detect_device("auto") == torch.device(expected)
    assert detect_device() == torch.device(expected)


def test_explicit_available_devices_are_honoured(machine):
    machine(mps=True, cuda=True)
    assert detect_device("cpu") == CPU
    assert detect_device("mps") == MPS
    assert detect_device("cuda") == CUDA
    assert detect_device("cuda:0") == torch.device("cuda:0")
    assert detect_device(" CUDA ") == CUDA


def test_cpu_is_always_available(machine):
    machine()
    assert detect_device("cpu") == CPU


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("cuda", "torch.cuda.is_available() is False"),
        ("mps", "torch.backends.mps.is_available() is False"),
    ],
)
def test_unavailable_explicit_device_is_refused_not_silently_cpu(machine, name, needle):
    machine()
    with pytest.raises(DeviceUnavailableError, match=rf"device '{name}' requested but") as e:
        detect_device(name)
    assert needle in str(e.value)
    assert "auto or cpu" in str(e.value)  # says how to fix it


def test_cuda_index_beyond_visible_devices_is_refused(machine):
    machine(cuda=True)
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:3'.*only 1 CUDA device"):
        detect_device("cuda:3")


@pytest.mark.parametrize("name", ["gpu", "tpu", "mps:0", "cuda:x", ""])
def test_unknown_device_name_lists_choices(name):
    with pytest.raises(ValueError, match=r"expected one of auto, cpu, cuda, mps"):
        detect_device(name)


def test_real_auto_detection_on_this_machine():
    # No monkeypatching: whatever this machine is, auto gives a device that exists.
    d = detect_device("auto")
    assert torch.zeros(1, device=d).device.type == d.type


# --- precision -------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [CPU, MPS, CUDA])
@pytest.mark.parametrize("batch_size", [None, 64, 8192])
def test_off_is_fp32_everywhere(machine, d, batch_size):
    machine(mps=True, cuda=True)
    assert resolve_precision("off", d, batch_size) == "fp32"


@pytest.mark.parametrize(
    ("d", "batch_size", "expected"),
    [
        (CPU, 8192, "fp32"),
        (MPS, 8192, "fp32"),
        (CUDA, None, "fp32"),
        (CUDA, 2048, "fp32"),  # the seed's shape: launch-bound, fp32 measured faster
        (CUDA, AUTO_BF16_MIN_BATCH - 1, "fp32"),
        (CUDA, AUTO_BF16_MIN_BATCH, "bf16"),  # large batches: bf16 measured 1.5-1.9x faster
        (CUDA, 8192, "bf16"),
    ],
)
def test_auto_policy_per_device_and_batch(machine, d, batch_size, expected):
    machine(mps=True, cuda=True, cuda_bf16=True)
    assert resolve_precision("auto", d, batch_size=batch_size) == expected


def test_auto_on_cuda_without_bf16_falls_back_to_fp32(machine):
    machine(cuda=True, cuda_bf16=False)
    assert resolve_precision("auto", CUDA, batch_size=8192) == "fp32"


def test_explicit_precisions_where_supported(machine):
    machine(mps=True, cuda=True, cuda_bf16=True)
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("bf16", CUDA) == "bf16"
    assert resolve_precision("fp16", CUDA) == "fp16"
    assert resolve_precision("fp16", MPS) == "fp16"
    assert resolve_precision("bf16", MPS) == "bf16"


def test_fp16_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"amp 'fp16' is not supported on the CPU; use amp: bf16"):
        resolve_precision("fp16", CPU)


def test_bf16_on_cuda_without_support_is_refused(machine, monkeypatch):
    machine(cuda=True, cuda_bf16=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100")
    with pytest.raises(DeviceUnavailableError, match=r"Tesla V100 has no native bf16"):
        resolve_precision("bf16", CUDA)


def test_bf16_on_a_cpu_without_native_bf16_is_refused(machine, monkeypatch):
    machine(cpu_bf16=False)
    monkeypatch.setattr(dev, "_cpu_name", lambda: "Intel Xeon Gold 6148")
    with pytest.raises(
        DeviceUnavailableError, match=r"this CPU \(Intel Xeon Gold 6148\) has no native bf16 .*use amp: off or auto"
    ):
        resolve_precision("bf16", CPU)
    assert device_report(CPU)["bf16_supported"] is False


def test_auto_on_a_cpu_with_native_bf16_stays_fp32(machine):
    machine(cpu_bf16=True)
    assert resolve_precision("auto", CPU, batch_size=AUTO_BF16_MIN_BATCH) == "fp32"
    assert device_report(CPU)["bf16_supported"] is True


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ONEDNN_MAX_CPU_ISA names x86 ISAs")
def test_the_cpu_probe_asks_onednn_which_isa_it_may_use():
    """Real hardware, no patching: held to AVX2, oneDNN has no bf16 (its LSTM refuses a bf16
    primitive there), so bf16 is refused with the fix, whatever this CPU's own flags."""
    code = (
        "import torch\n"
        "from rnn.device import DeviceUnavailableError, _cpu_bf16_supported, resolve_precision\n"
        "assert not _cpu_bf16_supported()\n"
        "try:\n"
        "    resolve_precision('bf16', torch.device('cpu'))\n"
        "except DeviceUnavailableError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "has no native bf16 (AVX512-BF16 or AMX)" in out.stdout


def test_bf16_on_old_macos_is_refused(machine):
    machine(mps=True, macos14=False)
    with pytest.raises(DeviceUnavailableError, match=r"macOS 14"):
        resolve_precision("bf16", MPS)


def test_unknown_amp_lists_choices():
    with pytest.raises(ValueError, match=r"unknown amp 'fp8'; expected one of auto, off, fp16"):
        resolve_precision("fp8", CPU)


def test_autocast_dtype():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("bf16") is torch.bfloat16


# --- report ----------------------------------------------------------------------------------


def test_cpu_report_describes_this_machine():
    r = device_report(CPU)
    assert r["device_type"] == "cpu"
    assert isinstance(r["device_name"], str) and r["device_name"]
    assert r["total_memory_bytes"] is None or r["total_memory_bytes"] > 2**26  # > 64 MiB
    assert r["torch_version"] == torch.__version__
    assert r["cuda_version"] == torch.version.cuda
    assert r["cpu_count"] >= 1
    assert r["num_threads"] == torch.get_num_threads()
    assert isinstance(r["bf16_supported"], bool)


def test_report_defaults_to_the_auto_device(machine):
    machine()
    assert device_report()["device_type"] == "cpu"


def test_mps_report(machine):
    machine(mps=True)
    r = device_report(MPS)
    assert r["device_type"] == "mps"
    assert r["device_name"].startswith("Apple MPS")
    assert r["bf16_supported"] is True


def test_cpu_name_has_a_fallback(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(dev.platform, "processor", lambda: "")
    monkeypatch.setattr(dev.platform, "machine", lambda: "arm64")
    assert dev._cpu_name() == "arm64"
