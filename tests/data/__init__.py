"""Tests of caffeish.data: databases, converters."""
