"""Backbone tests never write to the user's cache: one converted-weights cache per session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _session_weights_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANOMJAX_CACHE", str(tmp_path_factory.getbasetemp() / "anomjax_cache"))
