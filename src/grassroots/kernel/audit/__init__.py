"""Append-only audit trail chained with HMAC-SM3."""
