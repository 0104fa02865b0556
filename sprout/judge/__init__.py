"""The LLM-judge quality loop."""
