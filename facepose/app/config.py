"""Settings of the web app: the ``app:`` section of the config (``configs/app.yaml``)."""

from __future__ import annotations

from facepose.config import AppConfig, Config


def app_config(cfg: Config) -> AppConfig:
    """The ``app`` section of a whole :class:`~facepose.config.Config`."""
    return cfg.app
