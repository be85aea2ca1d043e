"""Helpers shared by the test folders that drive real processes."""
