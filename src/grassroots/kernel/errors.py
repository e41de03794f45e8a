"""Domain errors carry a stable code and a message id; the web layer renders them per language."""

from __future__ import annotations

from typing import Any


class GrassrootsError(Exception):
    """Base of every error a user may see. `code` is stable for API clients."""

    status_code = 400
    code = "bad_request"
    message_id = "error.bad_request"

    def __init__(self, message_id: str | None = None, /, **params: Any) -> None:
        self.message_id = message_id or self.message_id
        self.params = params
        super().__init__(f"{self.code}: {self.message_id} {params}")

    def message(self, language: str) -> str:
        from grassroots.kernel.i18n import translate

        return translate(self.message_id, language, **self.params)


class ValidationFailed(GrassrootsError):
    status_code = 422
    code = "validation_failed"
    message_id = "error.validation_failed"


class NotFound(GrassrootsError):
    status_code = 404
    code = "not_found"
    message_id = "error.not_found"


class PermissionDenied(GrassrootsError):
    status_code = 403
    code = "permission_denied"
    message_id = "error.permission_denied"


class NotAuthenticated(GrassrootsError):
    status_code = 401
    code = "not_authenticated"
    message_id = "error.not_authenticated"


class Conflict(GrassrootsError):
    status_code = 409
    code = "conflict"
    message_id = "error.conflict"
