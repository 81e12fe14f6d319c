"""Text generation from a checkpoint: prompt, length, temperature and top-k."""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from rnn.checkpoint import checkpoint_label, checkpoint_tokenizer, load_checkpoint
from rnn.device import detect_device
from rnn.errors import CheckpointError
from rnn.models import build_model
from rnn.train import model_config_from_checkpoint


@torch.no_grad()
def generate(
    checkpoint: Union[str, os.PathLike, bytes],
    prompt: str = "\n",
    length: int = 200,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: Optional[int] = None,
    device: str = "auto",
) -> str:
    """Continue ``prompt`` by ``length`` tokens sampled from the model in ``checkpoint``.

    ``temperature`` 0 means greedy decoding; ``top_k`` keeps exactly the k most likely tokens
    (ties at the k-th are broken by ``torch.topk``). ``seed=None`` seeds a private generator
    from the OS; the global torch RNG is never touched. The model and tokenizer are rebuilt
    from the checkpoint alone; the corpus is not needed. Returns the prompt followed by the
    generated text, joined as the tokenizer joins them (so a word model's continuation is not
    glued to the prompt's last word).
    """
    if length < 0:
        raise ValueError(f"length must be >= 0 (got {length})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (got {top_k})")
    dev = detect_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=dev)
    label = checkpoint_label(checkpoint)
    tokenizer = checkpoint_tokenizer(ckpt, label)  # checks the vocabulary before anything is sized by it
    try:
        with torch.random.fork_rng(devices=[]):  # weight init must not move the caller's global RNG
            model = build_model(model_config_from_checkpoint(ckpt), tokenizer.vocab_size).to(dev)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as e:  # no config or weights, or weights of another shape
        raise CheckpointError(f"checkpoint {label} does not hold a model this version can rebuild ({e!r:.300})") from e
    model.eval()

    gen = torch.Generator(device=dev)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()  # a non-deterministic seed for this generator only
    # An empty prompt starts from a newline (byte-level BPE has no unknown id to start from).
    ids = tokenizer.encode(prompt) or tokenizer.encode("\n") or [0]
    tokens = torch.tensor([ids], dtype=torch.long, device=dev)  # (1, P)
    logits, state = model.step(tokens)  # (1, P, V)
    out: list[int] = []
    for _ in range(length):
        last = logits[0, -1].float()  # (V,)
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            last = last / temperature
            if top_k is not None and top_k < last.numel():
                # Exactly k survivors: masking by value (< k-th) would keep every tie at the k-th.
                keep = torch.topk(last, top_k).indices  # (k,)
                last = torch.full_like(last, float("-inf")).scatter(0, keep, last[keep])
            nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=gen))
        out.append(nxt)
        logits, state = model.step(torch.tensor([[nxt]], device=dev), state)
    # Decode prompt and continuation together, then keep the prompt as typed: decoding the
    # continuation alone loses the separator a word tokenizer puts between tokens.
    head = tokenizer.decode(ids)
    whole = tokenizer.decode(ids + out)
    return prompt + (whole[len(head) :] if whole.startswith(head) else tokenizer.decode(out))
