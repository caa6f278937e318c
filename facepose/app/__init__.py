"""The facepose web app (``facepose app``): photo -> pose -> video in three steps, and a Batch tab.

::

    from facepose.app import launch
    launch("127.0.0.1", 7860)                 # blocks, serving until Ctrl-C
    demo = launch("127.0.0.1", 0, block=False)  # returns the running gr.Blocks (tests)

Gradio is imported only here and in :mod:`facepose.app.ui`, so the rest of facepose works without it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from facepose.config import Config, load_config

log = logging.getLogger(__name__)

__all__ = ["build_app", "launch"]


def build_app(cfg: Optional[Config] = None, **kwargs: Any):
    """The app as a ``gr.Blocks`` (not launched); see :func:`facepose.app.ui.build_app`."""
    from facepose.app.ui import build_app as _build

    return _build(cfg, **kwargs)


def launch(host: str = "127.0.0.1", port: int = 7860, cfg: Optional[Config] = None, *, block: bool = True, quiet: bool = False):
    """Build the app for ``cfg`` (a whole Config; loaded from configs/ when None) and serve it on
    ``host:port``, with the queue (one render at a time per renderer), the upload limit and the theme.

    ``block=False`` returns the running ``gr.Blocks`` at once (``demo.local_url``; ``demo.close()``
    stops it); otherwise it serves until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from facepose.app import ui
    from facepose.app.handlers import Workspace

    if cfg is None:
        cfg = load_config()
    ws = Workspace.from_config(cfg.app)
    removed = ws.prune()
    if removed:
        log.info("removed %d old files from %s", removed, ws.root)
    demo = ui.queue(ui.build_app(cfg, ws=ws))
    demo.launch(server_name=host, server_port=int(port) if port else None, prevent_thread_lock=not block,
                quiet=quiet, show_error=False, **ui.launch_options(demo))
    return demo
