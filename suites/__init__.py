"""Declarative suite files (TOML), shipped with the package."""
