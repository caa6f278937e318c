"""Renderers: turn a reference face and a pose sequence into frames (see base.py)."""

from facepose.render.base import RENDERERS, Renderer, get_renderer, register_renderer

__all__ = ["RENDERERS", "Renderer", "get_renderer", "register_renderer"]
