"""Scoring detections against annotations: matching, metrics, threshold choice."""
