"""Settings of the web app: the ``app:`` section of the config (``configs/app.yaml``)."""

from __future__ import annotations

from typing import Any

from facepose.config import AppConfig


def app_config(cfg: Any) -> AppConfig:
    """The ``app`` section of a whole :class:`~facepose.config.Config`, or the defaults when it has none."""
    section = getattr(cfg, "app", None)
    return section if isinstance(section, AppConfig) else AppConfig()
