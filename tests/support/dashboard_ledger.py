"""A ledger for the dashboard's tests: ``sprout demo``'s replayed day (with the quality
loop), plus a second process's traffic from three tenants over the same hours (so that
tenants and two hash chains show)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from sprout.config import load_settings
from sprout.demo import ReplayClock, pick_prompts, run_demo
from sprout.factory import build_controller

TENANTS = ("acme-support", "globex-search", "initech-chat")


def fill_demo_ledger(path: Path, *, hours: int = 24, prompts: int = 300, tenant_requests: int = 90):
    """Write the ledger at ``path``; returns its SQLAlchemy URL."""
    url = f"sqlite:///{path}"
    settings = load_settings(env={}, db_url=url)
    summary = run_demo(settings, hours=hours, prompts=prompts, progress=False)
    clock = ReplayClock(summary.start)
    controller = build_controller(
        settings.replace(zone=summary.zone),
        clock=clock.now,
        monotonic=clock.monotonic,
        rng=random.Random(7),
    )
    spacing_s = hours * 3600 / tenant_requests
    try:
        for i, record in enumerate(pick_prompts(tenant_requests, seed=7)):
            clock.set(summary.start + timedelta(seconds=(i + 0.25) * spacing_s))
            messages = [{"role": "user", "content": record.instruction}]
            tenant = TENANTS[i % len(TENANTS)] if i % 7 else TENANTS[0]
            controller.chat(messages, tenant=tenant, prompt_id=record.id)
    finally:
        controller.close()
    return url
