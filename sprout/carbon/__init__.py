"""Carbon intensity: readings, providers and the cached signal."""
