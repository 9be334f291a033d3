"""Sweeps: every configuration of a grid trained, finished runs skipped and broken ones resumed."""
