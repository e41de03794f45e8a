"""The incident command loop: categories, intake, dispatch, SLA clocks and escalation."""
