"""Placeholder: being written (see issues)."""
__all__: list[str] = []
