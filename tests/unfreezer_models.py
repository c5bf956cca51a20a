"""Kept for the modules not yet converted: every toy model and helper now lives in models.py."""

from models import *  # noqa: F403
