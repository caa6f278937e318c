"""Media I/O: video (PyAV streaming read, PyAV write), audio (soundfile/librosa, PyAV for video tracks), images."""

from facepose.media.audio import audio_duration, load_audio
from facepose.media.image import read_image, write_image
from facepose.media.video import VideoInfo, VideoWriter, iter_frames, probe_video, read_frames, write_video

__all__ = [
    "VideoInfo",
    "VideoWriter",
    "audio_duration",
    "iter_frames",
    "load_audio",
    "probe_video",
    "read_frames",
    "read_image",
    "write_image",
    "write_video",
]
