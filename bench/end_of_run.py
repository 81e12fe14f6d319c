"""What the end of a large sweep costs the driver: one compaction, then the report.

``python -m bench.end_of_run --trials 10000`` commits that many synthetic finished trials
(:func:`bench.bookkeeping.synthetic_trial`: about 20 config columns, 10 evaluations each) as
parts into a temporary job folder, then runs :meth:`ResultsStore.compact` and
:func:`build_report` each in a fresh Python process, as the runner does after the sweep, and
prints for each: the seconds it took, how far it raised the process's peak resident set above
its imports, and (for the report) the size of ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent

_STEP = """
import json, resource, sys, time
from orchestrator.report.render import build_report
from orchestrator.results import ResultsStore

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

job = sys.argv[2]
base, start = peak_mb(), time.perf_counter()
if sys.argv[1] == "compact":
    ResultsStore(job).compact()
else:
    build_report(job)
print(json.dumps({"s": time.perf_counter() - start, "rise_mb": peak_mb() - base}))
"""


def _measure(step: str, job: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _STEP, step, str(job)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.end_of_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10_000, help="synthetic finished trials (default 10000)")
    p.add_argument("--dir", type=Path, default=None, help="where the temporary job folder goes")
    args = p.parse_args(argv)

    from bench.bookkeeping import synthetic_trial
    from orchestrator.results import ResultsStore

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        job = Path(tmp) / "job"
        store = ResultsStore(job)
        for i in range(args.trials):
            row, evals = synthetic_trial(i)
            store.commit_trial(row, evals)
        compact = _measure("compact", job)
        report = _measure("report", job)
        html_mb = (job / "report.html").stat().st_size / 2**20
    print(f"end of run over {args.trials:,} trials:")
    print(f"  compact(): {compact['s']:.1f} s, peak RSS +{compact['rise_mb']:.0f} MB")
    print(f"  report:    {report['s']:.1f} s, peak RSS +{report['rise_mb']:.0f} MB, report.html {html_mb:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
