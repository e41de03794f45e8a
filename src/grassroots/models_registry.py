"""Imports every domain's models so Base.metadata is complete; add new models modules here.

It lives outside db.py so that the kernel, which imports db, never imports a domain.
"""

from grassroots.command import models as command_models  # noqa: F401
from grassroots.command.open311 import models as open311_models  # noqa: F401
from grassroots.irrigation import alarm_models as irrigation_alarm_models  # noqa: F401
from grassroots.irrigation.accounting import models as irrigation_accounting_models  # noqa: F401
from grassroots.irrigation.network import models as irrigation_network_models  # noqa: F401
from grassroots.irrigation.telemetry import models as irrigation_telemetry_models  # noqa: F401
from grassroots.kernel.addresses import models as addresses_models  # noqa: F401
from grassroots.kernel.audit import models as audit_models  # noqa: F401
from grassroots.kernel.auth import models as auth_models  # noqa: F401
from grassroots.kernel.calendar import models as calendar_models  # noqa: F401
from grassroots.kernel.regions import models as regions_models  # noqa: F401


def import_all_models() -> None:
    """Importing this module registered every table; the function makes call sites explicit."""
