"""Registers the shared fixtures for every test folder."""

pytest_plugins = ["tests.fixtures"]
