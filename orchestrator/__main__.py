"""``python -m orchestrator``: see :mod:`orchestrator.cli`."""

from orchestrator.cli import main

raise SystemExit(main())
