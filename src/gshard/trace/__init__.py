"""Tracing a user function into a flat program gshard can propagate over and partition."""
from .graph import Eqn, Graph, Lit, Value, trace

__all__ = ["Eqn", "Graph", "Lit", "Value", "trace"]
