"""Backends: each counts votes of one base model under the project's keyed noise."""
