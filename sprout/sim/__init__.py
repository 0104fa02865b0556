"""Trace-driven evaluation of policies (the Sprout protocol)."""
