"""Telemetry intake from field units: protocol codecs and the listeners that speak them."""
