"""Synthetic data the project trains and tests on (no data set can be downloaded here)."""
