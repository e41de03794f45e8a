"""Imports every domain's models so Base.metadata is complete; add new models modules here."""

from grassroots.kernel.audit import models as audit_models  # noqa: F401
from grassroots.kernel.auth import models as auth_models  # noqa: F401
from grassroots.kernel.regions import models as regions_models  # noqa: F401
from grassroots.kernel.calendar import models as calendar_models  # noqa: F401
from grassroots.irrigation.network import models as irrigation_network_models  # noqa: F401
