"""The ledger dashboard: one read-only page that shows the carbon ledger at a glance.

``sprout dashboard --db URL`` serves it (:mod:`sprout.cli.dashboard`); the proxy serves the
same page at ``/dashboard`` when the ``server_dashboard`` setting is on. The page is static
HTML, CSS and a small dependency-free script (``static/``, shipped in the package: no CDN)
that draws inline SVG charts from ``/dashboard/data.json``, which
:mod:`sprout.dashboard.data` builds from the ledger's own report APIs
(:func:`~sprout.ledger.audit.ledger_report`, :func:`~sprout.judge.report.verdict_report`,
:func:`~sprout.ledger.verify.verify`). The database is opened read-only (SQLite
``mode=ro``; PostgreSQL ``default_transaction_read_only``), no migration is run, and every
route answers GET only.
"""

from __future__ import annotations

__all__: list[str] = []
