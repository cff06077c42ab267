"""Transforms: region partitions and degradation simulators."""
