"""Adapters that cut timm classifiers and SMP segmentation networks into decoupled blocks."""
