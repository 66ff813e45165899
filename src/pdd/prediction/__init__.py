"""Prediction: a `pdd predict` run over new files and scans (plan, loop, merge, decision rules,
maps in the scan's geometry)."""
