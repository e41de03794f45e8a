"""Derived hydraulic quantities: flume and gate flow, volumes, quality flags, water accounts."""
