"""Checkpoint formats: ours (native), mmdet's, and ImageNet backbone weights. No Lightning here."""
