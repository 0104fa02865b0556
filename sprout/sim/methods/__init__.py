"""Simulated methods: the interface (``base``), the built-ins and their registry (``registry``)."""
