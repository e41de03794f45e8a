"""The water account: daily volumes per metering point, grouped by use, canal, WUA and turnout."""
