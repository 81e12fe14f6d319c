"""``python -m bench.gpu_summary OUT_DIR``: the GPU run's figures in one JSON and one table.

    python -m bench.gpu_summary bench/out/gpu --step triton=ok:71 --step bench-fp32=ok:24 ...

Reads what ``bench/gpu.sh`` wrote in ``OUT_DIR`` (:data:`STEPS`: one JSON per step), writes
``OUT_DIR/gpu-<YYYY-MM-DD>.json`` with ``device``, ``parity_ok``, ``ratios`` (Triton / cuDNN from the
Triton check), ``val_loss_4min``, the environment and each step's status and figures, and prints one
table last. ``--step KEY=STATUS[:SECONDS]`` is how the script says what ran; a step it does not name is
``skipped`` (or ``kept`` when its file is there, from an earlier run). A missing or unreadable file is
never an error: that step's figures are absent. Needs neither torch nor the GPU (it reads versions
from the step files, and asks ``nvidia-smi`` for the driver).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from bench.accuracy import NANOGPT_VAL_LOSS

#: The steps of bench/gpu.sh: key -> (label in the table, the file it writes in OUT_DIR).
STEPS: dict[str, tuple[str, str]] = {
    "triton": ("1 triton check", "triton-check.json"),
    "bench-fp32": ("2 bench fp32", "bench-fp32.json"),
    "bench-bf16": ("2 bench bf16", "bench-bf16.json"),
    "throughput": ("3 throughput sweep", "throughput-sweep.json"),
    "accuracy": ("4 accuracy", "accuracy.json"),
}
RATIO_SHAPES = ("seed", "char-rnn")
RATIO_PRECISIONS = ("fp32", "tf32", "bf16")
TITLE = "== GPU run summary"


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The file's JSON object, or None when it is missing or unreadable (a step killed mid-write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_steps(items: Sequence[str]) -> dict[str, tuple[str, Optional[float]]]:
    """``KEY=STATUS[:SECONDS]`` items as ``{key: (status, seconds)}``."""
    out: dict[str, tuple[str, Optional[float]]] = {}
    for item in items:
        key, _, rest = item.partition("=")
        status, _, seconds = rest.partition(":")
        try:
            out[key] = (status or "unknown", float(seconds) if seconds else None)
        except ValueError:
            out[key] = (status or "unknown", None)
    return out


def bench_figures(d: dict[str, Any]) -> dict[str, Any]:
    """``python -m bench``'s ratios as ``{shape: {measure: ratio}}``, with the precision they ran at."""
    short = {"engine LSTM / bare nn.LSTM": "lstm", "engine LN-LSTM / bare nn.LSTM": "ln",
             "Trainer / bare loop (same model)": "trainer"}
    by_shape: dict[str, dict[str, Any]] = {}
    for r in d.get("ratios") or []:
        name = short.get(r.get("measure"), r.get("measure"))
        by_shape.setdefault(r.get("shape"), {})[name] = r.get("ratio")
        by_shape[r.get("shape")][f"{name}_precision"] = r.get("precision")
    return {"amp": (d.get("settings") or {}).get("amp"), "ratios": by_shape, "elapsed_s": d.get("elapsed_s")}


def throughput_figures(d: dict[str, Any]) -> dict[str, Any]:
    """The sweep's rows by batch size, and its best."""
    rows = d.get("rows") or []
    best = next((r for r in rows if r.get("is_best")), None)
    return {
        "rows": [{k: r.get(k) for k in ("trial_id", "batch_size", "status", "samples_per_s", "step_time_ms",
                                        "peak_mem_mb", "estimate_mb", "precision")} for r in rows],
        "best_batch_size": best.get("batch_size") if best else None,
        "best_samples_per_s": best.get("samples_per_s") if best else None,
        "statuses": dict(sorted(Counter(str(r.get("status")) for r in rows).items())),
    }


def accuracy_figures(d: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "val_loss_best", "val_bpc_best", "val_accuracy_best", "best_step", "steps", "train_time_s",
            "max_time_s", "max_steps", "max_steps_spec", "step_fit", "params", "recurrence", "precision", "tf32",
            "device_name", "corpus_sha256", "spec", "validated")
    out = {k: d.get(k) for k in keys}
    config = d.get("config") or {}
    out["model"], out["data"], out["train"] = config.get("model"), config.get("data"), config.get("train")
    return out


def triton_figures(d: dict[str, Any]) -> dict[str, Any]:
    cases = d.get("parity") or []
    return {"parity_ok": d.get("parity_ok"), "cases": len(cases),
            "cases_ok": sum(bool(c.get("ok")) for c in cases if isinstance(c, dict)),
            "ratios": d.get("ratios") or {}, "timings": d.get("timings") or []}


FIGURES = {"triton": triton_figures, "bench-fp32": bench_figures, "bench-bf16": bench_figures,
           "throughput": throughput_figures, "accuracy": accuracy_figures}


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(files: dict[str, Optional[dict[str, Any]]]) -> dict[str, Any]:
    """Driver, card, torch, CUDA, cuDNN, Triton and Python versions, from the step files where they ran."""
    machine: dict[str, Any] = {}
    for key in ("bench-fp32", "bench-bf16", "throughput"):
        machine = (files.get(key) or {}).get("machine") or machine
    env: dict[str, Any] = {
        "gpu": None, "driver": None,
        "torch": machine.get("torch_version") or _version("torch"),
        "cuda": machine.get("cuda_version"), "cudnn": machine.get("cudnn_version"),
        "triton": (files.get("triton") or {}).get("triton_version") or _version("triton"),
        "python": machine.get("python") or platform.python_version(),
        "platform": machine.get("platform") or platform.platform(),
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip().splitlines()
        name, driver, memory = (x.strip() for x in smi[0].split(","))
        env.update(gpu=name, driver=driver, gpu_memory=memory)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        pass  # no NVIDIA driver here (a dry run on a CPU)
    return env


def device_name(files: dict[str, Optional[dict[str, Any]]], env: dict[str, Any]) -> Optional[str]:
    """The card's name, from the first step that recorded one (nvidia-smi's when none ran)."""
    triton = files.get("triton") or {}
    names = [triton.get("device"), (files.get("accuracy") or {}).get("device_name")]
    names += [((files.get(k) or {}).get("machine") or {}).get("device_name") for k in ("bench-fp32", "bench-bf16",
                                                                                       "throughput")]
    return next((n for n in names if n), env.get("gpu"))


def summarize(out_dir: Path, statuses: dict[str, tuple[str, Optional[float]]], total_s: Optional[float] = None,
              date: Optional[dt.date] = None) -> dict[str, Any]:
    """The summary payload (see the module docstring)."""
    files = {key: read_json(out_dir / name) for key, (_, name) in STEPS.items()}
    steps: dict[str, Any] = {}
    for key, (label, name) in STEPS.items():
        # A step the script did not name was left out of GPU_STEPS: its file, if any, is an earlier run's.
        status, seconds = statuses.get(key, ("kept" if files[key] is not None else "skipped", None))
        data = files[key]
        steps[key] = {"label": label, "status": status, "seconds": seconds, "file": name if data else None,
                      "figures": FIGURES[key](data) if data else None}
    triton = files["triton"] or {}
    cases = triton.get("parity") or []
    accuracy = files["accuracy"] or {}
    env = environment(files)
    return {
        "date": (date or dt.date.today()).isoformat(),
        "device": device_name(files, env),
        # True only when the check ran to the end and every case passed.
        "parity_ok": bool(triton.get("parity_ok") is True and cases and all(c.get("ok") for c in cases)),
        "ratios": triton.get("ratios") or {},
        "val_loss_4min": accuracy.get("val_loss_best"),
        "reference_val_loss": NANOGPT_VAL_LOSS,
        "environment": env,
        "total_s": total_s,
        "steps": steps,
    }


def _x(v: Any) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _figures_line(key: str, f: Optional[dict[str, Any]]) -> str:
    if not f:
        return ""
    if key == "triton":
        return f"parity {f['cases_ok']}/{f['cases']} {'ok' if f['parity_ok'] else 'FAILED'}"
    if key.startswith("bench"):
        return "; ".join(f"{shape} LSTM {_x(r.get('lstm'))} LN {_x(r.get('ln'))} trainer {_x(r.get('trainer'))}"
                         for shape, r in f["ratios"].items())
    if key == "throughput":
        n = ", ".join(f"{c} {s}" for s, c in f["statuses"].items())
        if f["best_samples_per_s"] is None:
            return n
        return f"best B {f['best_batch_size']}: {f['best_samples_per_s']:,.0f} samples/s ({n})"
    m = f.get("model") or {}
    best = f.get("val_loss_best")
    shape = f"{m.get('num_layers')}x{m.get('hidden_size')} {f.get('recurrence')} {f.get('precision')}"
    if best is None:
        return f"{shape}: no evaluation finished"
    partial = "" if f.get("status") in ("completed", "early_stopped") else f" [{f.get('status')}: so far]"
    return (f"val loss {best:.4f} at step {f.get('best_step')}/{f.get('steps')} (max_steps {f.get('max_steps')}), "
            f"{f.get('train_time_s') or 0:.0f} s, {shape}{partial}")


def format_summary(s: dict[str, Any]) -> str:
    """The table the GPU run ends with: steps, Triton / cuDNN ratios, the 4-minute val loss."""
    env = s["environment"]
    head = (f"{TITLE}: {s['device'] or 'no device recorded'} | driver {env.get('driver') or '-'} | "
            f"torch {env.get('torch') or '-'} | CUDA {env.get('cuda') or '-'} | triton {env.get('triton') or '-'} | "
            f"{s['date']}" + (f" | {s['total_s']:.0f} s" if s.get("total_s") is not None else "") + " ==")
    lines = [head, f"{'step':<20} {'status':<12} {'time':>6}  figures"]
    for key, step in s["steps"].items():
        secs = f"{step['seconds']:.0f}s" if step["seconds"] is not None else "-"
        lines.append(f"{step['label']:<20} {step['status']:<12} {secs:>6}  {_figures_line(key, step['figures'])}")
    lines.append(f"{'Triton / cuDNN nn.LSTM, fwd+bwd':<32}" + "".join(f"{p:>8}" for p in RATIO_PRECISIONS)
                 + "   (cuDNN ms / Triton ms)")
    for shape in RATIO_SHAPES:
        lines.append(f"  {shape:<30}" + "".join(f"{_x(s['ratios'].get(f'{shape}/{p}')):>8}" for p in RATIO_PRECISIONS))
    lines.append(f"parity: {'all cases passed' if s['parity_ok'] else 'NOT all passed (or not run)'}")
    best = s["val_loss_4min"]
    if best is None:
        lines.append(f"val loss in 4 min: not measured (nanoGPT {s['reference_val_loss']})")
    else:
        diff = best - s["reference_val_loss"]
        lines.append(f"val loss in 4 min: {best:.4f} vs nanoGPT {s['reference_val_loss']} "
                     f"({diff:+.4f}, {'better' if diff < 0 else 'worse'})")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_summary", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="the folder bench/gpu.sh wrote")
    p.add_argument("--step", action="append", default=[], metavar="KEY=STATUS[:SECONDS]",
                   help=f"a step's status as the script saw it; keys: {', '.join(STEPS)}")
    p.add_argument("--total-s", type=float, default=None, help="the script's wall time so far")
    args = p.parse_args(argv)
    summary = summarize(args.out_dir, parse_steps(args.step), args.total_s)
    path = args.out_dir / f"gpu-{summary['date']}.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    print()
    print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
