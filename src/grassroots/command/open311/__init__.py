"""Open311 GeoReport v2 (wiki.open311.org/GeoReport_v2) over the command loop, under /open311/v2/.

service_code = category code, agency_responsible = zone, address_id = standard address (door
plate); status is open/closed, with the detailed state in status_notes and in the
service-request-updates extension. Requests come in through command.actions.intake like every
other channel. The deployment's constants live here; the messages in locales/ are registered
into the shared catalogue on import.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib import resources

from grassroots.kernel.i18n import LANGUAGES, register_messages

PREFIX = "/open311/v2"
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
JURISDICTION_ID = "shuangfu.jiangjin.cq"  # *default*: our jurisdiction_id, ignored when sent
# When the API itself last changed (discovery's changeset unless the catalogue changed later).
API_CHANGESET = datetime(2026, 3, 9, 16, 0, tzinfo=UTC)  # 2026-03-10 00:00 Beijing
CONTACT = "双福街道综合指挥中心 Shuangfu street command centre, hotline 12345"
KEY_SERVICE = ("API keys are issued per client by the platform's security administrator "
               "(安全管理员) at the Shuangfu street command centre.")
SERVICE_TYPE = "realtime"  # requests are created synchronously, so no tokens are handed out

# The spec's window for GET requests: the default and the largest span, and its result cap.
DEFAULT_WINDOW = timedelta(days=90)
MAX_WINDOW = timedelta(days=90)
MAX_RESULTS = 1000

# Incidents of these major classes, and police work, name people (disputes, domestic violence,
# fights): the public feed leaves them out; only the client that submitted one sees it.
PRIVATE_MAJOR_CLASSES = frozenset({"dispute", "security"})

DEMO_CLIENT_NAME = "demo"
DEMO_KEY = "demo-open311-key-shuangfu"  # printed in the README; refused in production


def _register_messages() -> None:
    for language in LANGUAGES:
        path = resources.files(__name__).joinpath(f"locales/{language}.json")
        register_messages(language, json.loads(path.read_text(encoding="utf-8")))


_register_messages()
