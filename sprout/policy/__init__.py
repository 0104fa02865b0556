"""Policies that choose a directive for each request."""
