"""Compatibility names from when the batch sections lived apart from :class:`facepose.config.Config`.

``curate``, ``render`` and ``batch`` are now sections of ``Config`` itself; use ``facepose.config``.
"""

from __future__ import annotations

from typing import Optional

from facepose.config import BatchConfig, Config, CurateConfig, RenderConfig, load_config

RunConfig = Config
load_run_config = load_config


def as_run_config(cfg: Optional[Config]) -> Config:
    """``cfg``, or the defaults when none is given."""
    return cfg if cfg is not None else Config()


__all__ = ["BatchConfig", "Config", "CurateConfig", "RenderConfig", "RunConfig", "as_run_config", "load_run_config"]
