"""Backbone (Swin Transformer) and neck (FPN)."""
