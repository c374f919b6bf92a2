"""Reliability suite: faults, hostile input and convergence checks (issue 6)."""
