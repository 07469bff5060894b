"""Helpers the tests share, one module per area they serve (fixtures live in conftest.py)."""
