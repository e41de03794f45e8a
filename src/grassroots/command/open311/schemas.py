"""Input and output of the JSON API that security administrators use to manage Open311 clients."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from grassroots.command.open311.keys import CLIENT_NAME_MAX


class ClientCreate(BaseModel):
    name: str = Field(min_length=1, max_length=CLIENT_NAME_MAX)


class ClientOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    key_prefix: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class ClientCreated(ClientOut):
    api_key: str = Field(description="The client's api_key; shown only in this response.")
