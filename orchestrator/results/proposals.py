"""A search's proposals in the job folder: ``search/study.json`` and one ``search/<number>.json`` each.

The study of a ``sweep.tpe`` job is never stored: it is rebuilt from these records and the
trials' rows (:mod:`orchestrator.run.tpe`). A proposal's record is written, atomically, before
its trials are handed out, so a driver killed at any point finds every proposal it made, and
resumes its trials instead of proposing others. ``study.json`` holds what the proposals were
drawn from (the space, the sampler's seed and start-up count, the metric): a rerun whose spec
changed any of these is refused rather than mixing two studies (``samples`` may change).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

from orchestrator.results.storage import DamagedFolderError, repair_hint
from orchestrator.results.store import ResultsStore

__all__ = ["SEARCH_DIR", "STUDY_FILE", "ProposalRecord", "check_study", "read_proposals", "read_study",
           "write_proposal"]

SEARCH_DIR = "search"
STUDY_FILE = f"{SEARCH_DIR}/study.json"


@dataclass(frozen=True)
class ProposalRecord:
    """One point the search proposed.

    Attributes:
        number: its number in the study (0, 1, ...; refused proposals are numbered too).
        params: the sampler's parameters (floats and ints as drawn, a choice as its index).
        values: what it sets, dotted path -> value (a choice as its value).
        from_model: False for a start-up draw (random), True when the sampler's model chose it.
        trial_ids: its trials, one per seed; empty when it was refused or repeated an earlier one.
        refused: why validation refused it (its first problem), or None.
        duplicate_of: the number of the earlier proposal it repeats, or None.
    """

    number: int
    params: dict[str, Any]
    values: dict[str, Any]
    from_model: bool
    trial_ids: tuple[str, ...] = ()
    refused: Optional[str] = None
    duplicate_of: Optional[int] = None

    @property
    def accepted(self) -> bool:
        """It made trials of its own."""
        return bool(self.trial_ids)

    def to_json(self) -> str:
        data = asdict(self)
        data["trial_ids"] = list(self.trial_ids)
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> ProposalRecord:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return cls(
                number=int(data["number"]),
                params=dict(data["params"]),
                values=dict(data["values"]),
                from_model=bool(data["from_model"]),
                trial_ids=tuple(str(t) for t in data.get("trial_ids") or ()),
                refused=data.get("refused"),
                duplicate_of=data.get("duplicate_of"),
            )
        except (ValueError, TypeError, KeyError) as e:
            raise DamagedFolderError(f"{where}: not a proposal record ({e})") from e


def _name(number: int) -> str:
    return f"{SEARCH_DIR}/{number:06d}.json"


def write_proposal(store: ResultsStore, record: ProposalRecord) -> None:
    """Make ``record`` durable (before its trials are handed out)."""
    store.write_text(_name(record.number), record.to_json() + "\n")


def proposal_files(store: ResultsStore) -> list[str]:
    """The proposal records' paths in the job folder, in number order (``search/<number>.json``)."""
    names = sorted(n for n in store.list_names(SEARCH_DIR) if n[:6].isdigit() and n.endswith(".json"))
    return [f"{SEARCH_DIR}/{name}" for name in names]


def read_proposal(store: ResultsStore, rel: str, number: int) -> ProposalRecord:
    """The record at ``rel``, which must be proposal ``number`` (the records run 0, 1, 2, ...
    without a gap, so the k-th file in number order holds proposal k).

    Raises:
        DamagedFolderError: it cannot be read as a record, or holds another number (one is missing).
    """
    text = store.read_text(rel)  # not UTF-8: a DamagedFolderError naming the file and repair
    try:
        record = ProposalRecord.from_json(text or "", store.location(rel))
    except DamagedFolderError as e:
        raise DamagedFolderError(f"{e}; {repair_hint(store.job_dir)}") from e
    if record.number != number:
        raise DamagedFolderError(f"{store.location(SEARCH_DIR)}: proposal {number} is missing (found "
                                 f"{record.number}); {repair_hint(store.job_dir)}")
    return record


def read_proposals(store: ResultsStore) -> list[ProposalRecord]:
    """Every proposal record in the job folder, by number (see :func:`read_proposal`)."""
    return [read_proposal(store, rel, k) for k, rel in enumerate(proposal_files(store))]


def read_study(store: ResultsStore) -> Optional[dict[str, Any]]:
    """What the job's proposals were drawn from (``sampler``, ``seed``, ``startup``, ``metric``,
    ``space``), or None for a job without a search."""
    text = store.read_text(STUDY_FILE)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DamagedFolderError(f"{store.location(STUDY_FILE)}: not JSON ({e}); {repair_hint(store.job_dir)}") from e
    if not isinstance(data, dict):
        raise DamagedFolderError(f"{store.location(STUDY_FILE)}: not a JSON object; {repair_hint(store.job_dir)}")
    return data


def check_study(store: ResultsStore, study: Mapping[str, Any]) -> None:
    """Record what the proposals are drawn from, or check that an earlier run drew from the same.

    Raises:
        DamagedFolderError: the job folder's proposals came from another space, seed, start-up or metric.
    """
    earlier = read_study(store)
    if earlier is None:
        store.write_text(STUDY_FILE, json.dumps(dict(study), sort_keys=True, allow_nan=False) + "\n")
        return
    changed = sorted(k for k in {*earlier, *study} if earlier.get(k) != study.get(k))
    if changed:
        raise DamagedFolderError(
            f"{store.location(SEARCH_DIR)}: the proposals there were drawn with another sweep.tpe "
            f"({', '.join(changed)} changed); only tpe.samples may change between runs of one job: "
            "use run --fresh (the old results are kept aside) or another name"
        )
