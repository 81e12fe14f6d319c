"""A sweep of more trials than a plot can show: one-line-per-trial plots draw a spread of them
(evenly spaced ranks, the best and the worst included) and say so; the numbers use every trial."""

from __future__ import annotations

import pytest

from orchestrator.report import plots
from orchestrator.report.importance import importance_section
from orchestrator.report.training import curves


def test_thin_keeps_evenly_spaced_ranks_with_both_ends() -> None:
    assert plots.thin(list(range(5)), 10) == [0, 1, 2, 3, 4]
    picked = plots.thin(list(range(1001)), 11)
    assert picked == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    many = plots.thin(list(range(10_001)), 300)
    assert len(many) == len(set(many)) == 300 and many[0] == 0 and many[-1] == 10_000
    assert plots.thin(list(range(10)), 1) == [0]


def _sweep(n_per_config: int) -> tuple[list[dict], dict[str, str]]:
    label, evals = {}, []
    for config in ("model.cell=gru", "model.cell=lstm"):
        for seed in range(n_per_config):
            tid = f"{config[-3:]}{seed:04d}"
            label[tid] = config
            base = 1.0 + seed / 1000 + (0.5 if config.endswith("lstm") else 0.0)
            evals += [{"trial_id": tid, "step": s, "train_loss": base + 1 / s, "val_loss": base + 2 / s}
                      for s in (10, 20, 30)]
    return evals, label


def _lines(svg: str) -> int:
    return svg.count('id="line2d_')


@pytest.mark.slow
def test_the_curves_of_a_large_sweep_draw_a_spread_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    evals, label = _sweep(200)  # 400 trials, 200 per configuration
    colors = {"model.cell=gru": "C0", "model.cell=lstm": "C1"}
    statuses = dict.fromkeys(label, "completed")
    order = ["model.cell=gru", "model.cell=lstm"]
    thinned = [b for b in curves(evals, label, "val_loss", colors, statuses, order) if hasattr(b, "svg")]
    assert "300 of 400 trials drawn, at evenly spaced ranks of their lowest val_loss" in thinned[0].caption
    assert "a panel with more than 20 trials draws 20 of them" in thinned[1].caption
    monkeypatch.setattr(plots, "MAX_LINES", 10_000)
    monkeypatch.setattr("orchestrator.report.training._MAX_PAIRS", 10_000)
    whole = [b for b in curves(evals, label, "val_loss", colors, statuses, order) if hasattr(b, "svg")]
    assert "trials drawn" not in whole[0].caption and "more than" not in whole[1].caption
    assert _lines(whole[0].svg) - _lines(thinned[0].svg) == 100  # one line per trial drawn
    assert _lines(whole[1].svg) - _lines(thinned[1].svg) == 2 * 2 * (200 - 20)  # train + val per seed


def test_parallel_coordinates_of_a_large_sweep_draw_a_spread_the_importance_uses_all() -> None:
    rows = [{"trial_id": str(i), "model.hidden_size": 64 * (1 + i % 4), "train.lr": 10 ** -(2 + i % 3),
             "best_val_loss": 1.0 + (i % 4) * 0.1 + (i % 3) * 0.01 + i * 1e-5} for i in range(400)]
    blocks = importance_section(rows, ["model.hidden_size", "train.lr"], "best_val_loss")
    figure = next(b for b in blocks if hasattr(b, "svg"))
    assert "300 of 400 trials drawn" in figure.caption and "the importance below uses all of them" in figure.caption
    text = " ".join(getattr(b, "text", "") for b in blocks)
    assert "across these 400 trials" in text
