"""What the tests share: fakes of the world Sprout talks to (carbon APIs, an OpenAI-compatible
server, engines, policies, a clock), builders (settings, receipts, demo ledgers, tiny models)
and the real servers the suite starts itself (PostgreSQL, headless Chromium, uvicorn)."""
