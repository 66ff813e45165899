"""Evaluation: metrics, thresholds and colour scale from normals, scoring (in-process and through
Lightning's predict loop), aggregation of metrics over classes and seeds."""
