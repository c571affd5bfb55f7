"""Shared building blocks used by several methods (nearest neighbours, coresets, layers)."""
