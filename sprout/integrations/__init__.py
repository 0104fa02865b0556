"""Adapters that plug Sprout into other LLM tooling (imported on demand, one per tool)."""
