"""The job report: ``report.md`` and a self-contained ``report.html`` built from the tables."""

from orchestrator.report.render import build_report

__all__ = ["build_report"]
