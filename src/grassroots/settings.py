"""Settings from GRASSROOTS_* environment variables; a bad value stops start-up clearly."""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(enum.StrEnum):
    DEMO = "demo"
    PRODUCTION = "production"
    TEST = "test"


class SettingsError(RuntimeError):
    """Raised when an environment variable holds a value the platform cannot run with."""


class Settings(BaseSettings):
    """Every setting is documented in README.md; tests/test_docs.py fails when one is not."""

    model_config = SettingsConfigDict(env_prefix="GRASSROOTS_", extra="ignore")

    environment: Environment = Environment.DEMO
    database_url: str = "sqlite:///var/grassroots.db"
    var_dir: Path = Path("var")
    data_key_file: Path = Path("var/data-keys.json")
    default_language: str = "zh_CN"
    tile_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    idle_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)
    lockout_threshold: int = Field(default=5, ge=1, le=100)
    lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    require_admin_totp: bool | None = None
    upload_dir: Path = Path("var/uploads")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(
                "must start with sqlite:// or postgresql:// "
                "(e.g. postgresql://user@127.0.0.1:5432/grassroots)"
            )
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("default_language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        if value not in ("zh_CN", "en"):
            raise ValueError("must be zh_CN or en")
        return value

    @property
    def admin_totp_required(self) -> bool:
        """Production requires TOTP for admin roles; the demo and tests relax it unless told."""
        if self.require_admin_totp is not None:
            return self.require_admin_totp
        return self.environment == Environment.PRODUCTION

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings() -> Settings:
    """Read the environment, turning pydantic's error into one line per bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "GRASSROOTS_" + str(err["loc"][0]).upper() if err["loc"] else "GRASSROOTS_*"
            lines.append(f"{name}: {err['msg']}")
        raise SettingsError("Bad setting:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
