"""Pose sequences: 68 face landmarks per frame at 24 fps."""

from facepose.pose.sequence import N_POINTS, PoseSequence

__all__ = ["N_POINTS", "PoseSequence"]
