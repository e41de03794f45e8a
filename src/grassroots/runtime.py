"""The process-wide pieces built once from settings: engine, session factory, crypto, clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from grassroots.db import make_engine, make_session_factory
from grassroots.kernel.clock import Clock, get_clock
from grassroots.kernel.crypto import SoftwareProvider, load_key_ring
from grassroots.settings import Environment, Settings


@dataclass
class Runtime:
    settings: Settings
    clock: Clock = field(default_factory=get_clock)

    @cached_property
    def engine(self) -> Engine:
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        return make_engine(self.settings.database_url)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def crypto(self) -> SoftwareProvider:
        create = self.settings.environment != Environment.PRODUCTION
        return SoftwareProvider(load_key_ring(self.settings.data_key_file, create=create))
