"""The test support code's own known answers: the face centre every moving-face video turns about."""

from __future__ import annotations

import numpy as np

from tests.support.synth import FACE_CENTRE, moving_face_frames


def test_face_centre_is_the_middle_of_the_detected_face(astronaut):
    from facepose.face.detect import FaceDetector

    x0, y0, x1, y1 = FaceDetector().detect_one(astronaut, "astronaut")
    assert np.allclose(((x0 + x1) / 2, (y0 + y1) / 2), FACE_CENTRE, atol=1.5)


def test_moving_face_frames_put_the_face_centre_where_the_path_says(astronaut):
    from facepose.face.detect import FaceDetector

    frame = next(iter(moving_face_frames(astronaut, 1.0)))  # t = 0: no shift, zoom 1, face at the frame centre
    x0, y0, x1, y1 = FaceDetector().detect_one(frame, "frame 0")
    assert np.allclose(((x0 + x1) / 2, (y0 + y1) / 2), (128, 128), atol=4)
