"""Faces: detection (dlib HOG or CNN), 68 landmarks, video tracking, square crops and the Face Locator mask."""

from facepose.face.crop import FaceCrop, crop_box, crop_face, crop_frames, crop_image, face_mask, to_crop
from facepose.face.detect import DETECTORS, FaceDetector, models_dir
from facepose.face.landmarks import LANDMARKS, LandmarkPredictor, get_landmark_model, register_landmarks
from facepose.face_layout import face_box
from facepose.face.track import FaceTracker, track_frames, track_video

__all__ = [
    "DETECTORS",
    "LANDMARKS",
    "FaceCrop",
    "FaceDetector",
    "FaceTracker",
    "LandmarkPredictor",
    "crop_box",
    "crop_face",
    "crop_frames",
    "crop_image",
    "face_box",
    "face_mask",
    "get_landmark_model",
    "models_dir",
    "register_landmarks",
    "to_crop",
    "track_frames",
    "track_video",
]
