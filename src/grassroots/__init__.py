"""Grassroots: a platform for grassroots governance and smart irrigation."""

__version__ = "0.1.0"
