"""Simulated methods: the interface and registry (``base``) and the built-ins."""
