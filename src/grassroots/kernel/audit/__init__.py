"""Append-only audit trail chained with HMAC-SM3. Every write calls `record` in its transaction."""

from grassroots.kernel.audit.chain import record

__all__ = ["record"]
