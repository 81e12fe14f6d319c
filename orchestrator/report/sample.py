"""A short text sample from the best trial's checkpoint, so the report shows what the model writes.

Generation runs on the CPU with a fixed seed (the same text every rebuild) through
:func:`rnn.sample.generate`; torch is imported only here, and only when a checkpoint exists.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from typing import Any, Optional

from orchestrator.report.blocks import Block, Code, Heading, Para
from orchestrator.results import ResultsStore

__all__ = ["SAMPLE_SEED", "sample_section"]

log = logging.getLogger(__name__)

SAMPLE_SEED = 0
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 20
#: Tokens to generate: about 200 characters at char level; a BPE or word token carries several.
_TOKENS = {"char": 200}
_OTHER_TOKENS = 60
_MAX_CHARS = 400


def sample_section(store: ResultsStore, best: Optional[Mapping[str, Any]], prompt: str = "\n") -> list[Block]:
    """The sample block for trial row ``best`` (the best configuration's best trial), or a one-line
    note why there is none."""
    blocks: list[Block] = [Heading(2, "Text sample from the best checkpoint")]
    if best is None:
        return blocks + [Para("No sample: no trial has completed yet.")]
    data = store.read_checkpoint_bytes(best["trial_id"]) if best.get("checkpoint") else None
    if data is None:
        why = "not kept, or removed by clean"
        return blocks + [Para(f"No sample: trial {best['trial_id']} has no checkpoint ({why}).")]
    from rnn.errors import CheckpointError
    from rnn.sample import generate

    level = str(best.get("data.level") or "char")
    length = _TOKENS.get(level, _OTHER_TOKENS)
    try:
        text = generate(data, prompt=prompt, length=length,
                        temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, seed=SAMPLE_SEED, device="cpu")
    except (CheckpointError, RuntimeError, ValueError) as e:  # a damaged or foreign checkpoint: say so, go on
        log.warning("no text sample from %s: %s", best["trial_id"], e)
        return blocks + [Para(f"No sample: the checkpoint of {best['trial_id']} could not be used ({e}).")]
    text = text.lstrip()[:_MAX_CHARS]  # the prompt is a newline, and what follows may start blank
    where = f"{store.job_dir.rstrip('/')}/{store.checkpoint_relpath(best['trial_id'])}"
    return blocks + [
        Para(f"Trial {best['trial_id']}: {len(text)} characters generated on the CPU (seed {SAMPLE_SEED}, "
             f"temperature {SAMPLE_TEMPERATURE}, top-k {SAMPLE_TOP_K}). The same text again, or longer:"),
        Code(f"python -m orchestrator sample {shlex.quote(where)} --length {length} --temperature "
             f"{SAMPLE_TEMPERATURE} --top-k {SAMPLE_TOP_K} --seed {SAMPLE_SEED}"),
        Code(text),
    ]
