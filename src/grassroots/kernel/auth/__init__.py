"""Accounts, roles, data scopes, sessions, TOTP and API tokens."""
