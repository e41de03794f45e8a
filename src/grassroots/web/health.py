"""GET /healthz: 200 when the database answers, 503 when it does not."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from grassroots.web.deps import RuntimeDep

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz(runtime: RuntimeDep) -> JSONResponse:
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse({"status": "error", "database": "unavailable",
                             "detail": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
