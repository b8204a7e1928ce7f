"""Threshold calibration on held-out defect-free images (built in the edge-runtime issue)."""
