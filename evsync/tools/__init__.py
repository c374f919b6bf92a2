"""Small helpers shipped with evsync for demos and tests; not part of the sync engine."""
