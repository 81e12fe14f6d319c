"""What every section of the job spec shares: a frozen pydantic model that forbids unknown keys,
and the strictly typed scalars several sections use."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

from rnn.config import SEED_MAX

Steps = Annotated[int, Strict(), Field(ge=1, le=10**9)]
Text = Annotated[str, Strict(), Field(min_length=1, max_length=4096)]
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
