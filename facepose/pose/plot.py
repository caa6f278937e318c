"""A picture of what a pose sequence does: mouth opening and head yaw, pitch and roll over time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from facepose import storage
from facepose import face_layout as layout
from facepose.pose import face_model as fm
from facepose.pose.sequence import PoseSequence


@dataclass
class PoseCurves:
    """t: (T,) seconds; mouth: (T,) inner-lip gap / inter-ocular distance; head_pose: (T, 3) yaw, pitch,
    roll degrees; estimated: whether head_pose was fitted from the landmarks (the file had none)."""

    t: np.ndarray
    mouth: np.ndarray
    head_pose: np.ndarray
    estimated: bool


def pose_curves(pose: PoseSequence) -> PoseCurves:
    """The curves :func:`plot_pose` draws. Without a head_pose column, the pose is fitted with the 3D face
    model (weak perspective) and shown relative to the first seen frame. Lost frames are NaN."""
    t = np.arange(len(pose)) / float(pose.fps)
    seen = pose.visible
    mouth = np.where(seen, layout.mouth_opening(pose.landmarks), np.nan)  # lost frames are gaps, not zeros
    if pose.head_pose is not None:
        return PoseCurves(t, mouth, np.asarray(pose.head_pose, np.float64), False)
    hp = np.full((len(pose), 3), np.nan)
    if seen.any():
        hp[seen] = fm.estimate_head_pose(pose.landmarks[seen])
        hp -= hp[np.argmax(seen)]
    return PoseCurves(t, mouth, hp, True)


def plot_pose(pose: Union[PoseSequence, str, os.PathLike], uri: str | os.PathLike, title: Optional[str] = None, dpi: int = 100) -> None:
    """Write a PNG to ``uri`` (path or s3://): mouth opening on top, head yaw/pitch/roll below, over time.

    Lost frames (score 0) are greyed out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(pose, PoseSequence):
        pose = PoseSequence.load(os.fspath(pose))
    c = pose_curves(pose)
    fig = Figure(figsize=(10, 5.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    ax1.plot(c.t, c.mouth, color="tab:red", lw=1.5)
    ax1.fill_between(c.t, 0, c.mouth, color="tab:red", alpha=0.15)
    ax1.set_ylabel("mouth opening\n(lip gap / eye distance)")
    top = float(np.nanmax(c.mouth)) if np.isfinite(c.mouth).any() else 0.0
    ax1.set_ylim(0, max(0.3, top * 1.1))
    for i, (name, colour) in enumerate((("yaw", "tab:blue"), ("pitch", "tab:green"), ("roll", "tab:orange"))):
        ax2.plot(c.t, c.head_pose[:, i] if len(c.head_pose) else [], color=colour, lw=1.5, label=name)
    ax2.axhline(0, color="0.6", lw=0.8)
    ax2.set_ylabel("head pose (degrees)" + ("\nfitted, from frame 0" if c.estimated else ""))
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper right", ncol=3, fontsize=9)
    lost = ~pose.visible
    if lost.any():
        for ax in (ax1, ax2):
            ax.fill_between(c.t, 0, 1, where=lost, color="0.5", alpha=0.25, step="mid",
                            transform=ax.get_xaxis_transform(), label="face lost")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if len(c.t):
            ax.set_xlim(0, max(c.t[-1], 1.0 / pose.fps))
    name = title or pose.source or "pose"
    fig.suptitle(f"{name}: {len(pose)} frames, {pose.duration:.2f} s at {pose.fps:g} fps")
    fig.tight_layout()
    with storage.writer(uri, suffix=".png") as path:
        fig.savefig(path, format="png")
