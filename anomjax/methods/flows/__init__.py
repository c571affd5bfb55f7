"""Normalizing-flow methods: an exact density of normal features, scored by likelihood."""

from anomjax.methods.flows.cflow import CFlow
from anomjax.methods.flows.csflow import CSFlow
from anomjax.methods.flows.differnet import DifferNet
from anomjax.methods.flows.fastflow import FastFlow

__all__ = ["CFlow", "CSFlow", "DifferNet", "FastFlow"]
