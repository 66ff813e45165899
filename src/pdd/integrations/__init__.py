"""Bridges to other anomaly-detection libraries (optional extras, imported only where used)."""
