"""edrules: analytics-driven rules workbench for email security."""

__version__ = "0.1.0"
