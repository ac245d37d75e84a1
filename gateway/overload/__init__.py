"""Overload: keep serving at capacity when more requests arrive than the pool can serve."""
