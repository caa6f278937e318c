"""Pose sequences: 68 face landmarks per frame at 24 fps."""

from facepose.pose.sequence import N_POINTS, PoseSequence

__all__ = ["N_POINTS", "PoseSequence", "from_source"]


def __getattr__(name: str):
    # from_source pulls in media, face and audio code: import it only when asked for.
    if name == "from_source":
        from facepose.pose.source import from_source

        return from_source
    raise AttributeError(name)
