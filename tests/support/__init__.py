"""Helpers shared by Baryon's tests (fixtures live in tests/conftest.py)."""
