"""Face detection, landmarks, crops and the Face Locator mask, on a real face photo."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from facepose.config import FaceConfig
from facepose.errors import InputError, ModelNotFoundError, NoFaceError
from facepose.face import (
    DETECTORS,
    LANDMARKS,
    FaceDetector,
    LandmarkPredictor,
    crop_box,
    crop_face,
    crop_image,
    face_mask,
    get_landmark_model,
    models_dir,
    to_crop,
)
from facepose.face.detect import model_path
from facepose.face_layout import LEFT_EYE, MOUTH, NOSE, RIGHT_EYE, face_box
from tests.synth import phone_photo

# Hand-annotated on skimage's astronaut photo (looking at it at 3x): the face's skin from brow-line
# hair to chin and ear to ear, and the centres of the two eyes (image-left, image-right).
ASTRONAUT_FACE = (168, 68, 282, 188)
ASTRONAUT_EYES = ((203.0, 101.0), (247.0, 103.0))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(FaceConfig())


@pytest.fixture(scope="module")
def predictor() -> LandmarkPredictor:
    return LandmarkPredictor()


@pytest.fixture(scope="module")
def astro_landmarks(astronaut, detector, predictor) -> np.ndarray:
    return predictor.predict(astronaut, detector.detect_one(astronaut, "astronaut"))


def _centre(lm: np.ndarray, part: np.ndarray) -> np.ndarray:
    return lm[part].mean(axis=0)


def _box_centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def test_landmarks_land_on_the_astronauts_face(astro_landmarks):
    lm = astro_landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert (lm[:, 0] >= x0).all() and (lm[:, 0] <= x1).all() and (lm[:, 1] >= y0).all() and (lm[:, 1] <= y1).all()
    eyes_y = (_centre(lm, RIGHT_EYE)[1] + _centre(lm, LEFT_EYE)[1]) / 2
    nose_tip_y = lm[30, 1]
    mouth_y = _centre(lm, MOUTH)[1]
    assert eyes_y < nose_tip_y < mouth_y
    assert lm[8, 1] > mouth_y  # chin below the mouth
    # iBUG order: points 36-41 are the eye on the image's left
    assert _centre(lm, RIGHT_EYE)[0] < _centre(lm, LEFT_EYE)[0]
    for found, annotated in zip((_centre(lm, RIGHT_EYE), _centre(lm, LEFT_EYE)), ASTRONAUT_EYES):
        assert np.linalg.norm(found - np.array(annotated)) < 6.0


def test_detector_ignores_a_weak_second_detection_and_returns_the_face(astronaut, detector):
    # HOG with one upsampling pass also fires (score ~0.1 against ~1.2) on the astronaut's suit
    boxes = detector.detect(astronaut)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    assert fx0 < cx < fx1 and fy0 < cy < fy1


def test_largest_of_several_faces_is_chosen_with_a_warning(astronaut, detector, caplog):
    small = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 1024, 3), 200, np.uint8)
    canvas[:, 512:] = astronaut
    canvas[64:448, 32:416] = small
    with caplog.at_level(logging.WARNING, logger="facepose.face.detect"):
        box = detector.detect_one(canvas, name="two-faces.png")
    assert box[0] > 512  # the full-size face, on the right
    assert any("2 faces found in two-faces.png" in r.getMessage() for r in caplog.records)
    # the tracker's quicker search (fewer upsampling passes first) picks the same face
    quick = detector.detect(canvas, first_found=True)[0]
    assert np.linalg.norm(_box_centre(quick) - _box_centre(box)) < 0.25 * (box[2] - box[0])


def test_large_image_is_detected_downscaled_and_mapped_back(astronaut, detector, predictor, astro_landmarks):
    # 2.5x the photo on a 2200x1400 canvas: the detector sees it at 640 px, the predictor at full size
    big = cv2.resize(astronaut, (1280, 1280), interpolation=cv2.INTER_CUBIC)
    canvas = np.zeros((1400, 2200, 3), np.uint8)
    canvas[60:1340, 700:1980] = big
    box = detector.detect_one(canvas, name="big.png")
    lm = predictor.predict(canvas, box)
    expected = astro_landmarks * 2.5 + np.array([700 + 0.75, 60 + 0.75])  # pixel centres scale about -0.5
    assert np.abs(lm - expected).mean() < 4.0


def test_non_square_image_gives_an_unsquashed_square_crop(astronaut, detector, predictor, astro_landmarks):
    # 900x500 with the face well right of centre: the crop must be square and keep the face's shape
    canvas = np.full((500, 900, 3), 90, np.uint8)
    canvas[:, 380:892] = astronaut[:500]
    crop = crop_face(canvas, FaceConfig(), detector, predictor, name="wide.png")
    assert crop.image.shape == (512, 512, 3) and crop.mask.shape == (512, 512)
    cx, cy, side = crop.box
    assert side <= 500 and 0 <= cx - side / 2 and cx + side / 2 <= 900
    # the crop's landmarks are the photo's under one scale and a shift (x and y scaled alike)
    src = astro_landmarks + np.array([380, 0])
    sx = np.polyfit(src[:, 0], crop.landmarks[:, 0], 1)[0]
    sy = np.polyfit(src[:, 1], crop.landmarks[:, 1], 1)[0]
    assert sx == pytest.approx(512 / side, rel=0.01) and sy == pytest.approx(sx, rel=0.01)
    # and they are where a fresh detection on the crop image finds them
    again = predictor.predict(crop.image, detector.detect_one(crop.image, "crop"))
    assert np.linalg.norm(again - crop.landmarks, axis=1).mean() < 4.0


def test_no_face_raises_no_face_error_naming_the_input(detector):
    from skimage import data

    coffee = np.ascontiguousarray(data.coffee())
    with pytest.raises(NoFaceError, match=r"no face found in coffee\.png; use a photo"):
        detector.detect_one(coffee, name="coffee.png")
    with pytest.raises(NoFaceError, match=r"s3://refs/flat\.png"):
        crop_face(np.full((300, 400, 3), 127, np.uint8), name="s3://refs/flat.png")


def test_cnn_detector_finds_the_face(astronaut):
    boxes = FaceDetector(FaceConfig(detector="cnn")).detect(astronaut)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    assert fx0 < (x0 + x1) / 2 < fx1 and fy0 < (y0 + y1) / 2 < fy1


def test_models_are_found_without_importing_their_package_and_missing_ones_are_named():
    import sys

    assert (models_dir() / "shape_predictor_68_face_landmarks.dat").is_file()
    assert (models_dir() / "mmod_human_face_detector.dat").is_file()
    assert "face_recognition_models" not in sys.modules
    with pytest.raises(ModelNotFoundError, match=r"no_such_model\.dat.*face-recognition-models"):
        model_path("no_such_model.dat")


def test_backends_are_chosen_by_name_from_registries():
    assert {"hog", "cnn"} <= set(DETECTORS) and "dlib68" in LANDMARKS
    assert isinstance(get_landmark_model(FaceConfig()), LandmarkPredictor)
    with pytest.raises(InputError, match=r"unknown face detector 'yolo'; choose from \['cnn', 'hog'\]"):
        FaceDetector(FaceConfig(detector="yolo"))
    with pytest.raises(InputError, match="unknown landmark model 'nope'"):
        get_landmark_model(FaceConfig(landmark_model="nope"))


# -- crop boxes and masks ----------------------------------------------------------------------------
def test_crop_box_is_square_with_margin_and_stays_inside_the_image(astro_landmarks):
    x0, y0, x1, y1 = face_box(astro_landmarks)
    cx, cy, side = crop_box(astro_landmarks, (512, 512), margin=0.5)
    assert side == pytest.approx(max(x1 - x0, y1 - y0) * 2, abs=1)
    assert cx == pytest.approx((x0 + x1) / 2, abs=1) and cy == pytest.approx((y0 + y1) / 2, abs=1)
    # near a corner, a box that would stick out is moved inside; one larger than the image is clipped
    cx, cy, side = crop_box(astro_landmarks - np.array([170, 80]), (512, 400), margin=0.6)
    assert cx - side / 2 == 0 and cy - side / 2 == 0
    cx, cy, side = crop_box(astro_landmarks, (300, 260), margin=2.0)
    assert side == 260 and cx + side / 2 <= 300 and cy + side / 2 <= 260


def test_crop_image_pads_outside_with_black_and_maps_landmarks(astronaut, astro_landmarks):
    box = (0.0, 256.0, 160.0)  # its left half is left of the image
    out = crop_image(astronaut, box, 320)
    assert out.shape == (320, 320, 3)
    assert out[:, :158].max() == 0 and (out[:, 162:].max(axis=2) > 0).mean() > 0.95
    lm = to_crop(astro_landmarks, (225.0, 130.0, 200.0), 400)
    np.testing.assert_allclose(lm, (astro_landmarks - np.array([125, 30]) + 0.5) * 2 - 0.5, atol=1e-4)


def test_crop_box_over_a_clip_is_one_steady_box_that_ignores_a_stray_frame(astro_landmarks):
    rng = np.random.default_rng(0)
    shifts = np.stack([np.linspace(-30, 30, 48), 10 * np.sin(np.linspace(0, 6, 48))], axis=1)
    clip = astro_landmarks[None] + shifts[:, None] + rng.normal(0, 1.0, (48, 68, 2))
    box = crop_box(clip, (512, 512), margin=0.6)
    x0, y0 = box[0] - box[2] / 2, box[1] - box[2] / 2
    boxes = face_box(clip)
    assert (boxes[:, 0] >= x0).all() and (boxes[:, 2] <= x0 + box[2]).all()
    assert (boxes[:, 1] >= y0).all() and (boxes[:, 3] <= y0 + box[2]).all()
    stray = clip.copy()
    stray[20] += 150  # one bad fit far away
    assert np.allclose(crop_box(stray, (512, 512), margin=0.6), box, atol=4)
    lost = clip.copy()
    lost[5:9] = 0  # lost frames are zeros and do not count
    assert np.allclose(crop_box(lost, (512, 512), margin=0.6), box, atol=2)


def test_face_mask_is_the_expanded_landmark_box_and_unions_over_frames(astro_landmarks):
    x0, y0, x1, y1 = face_box(astro_landmarks)
    mask = face_mask(astro_landmarks, (512, 512), expand=1.2)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert (mask > 0).sum() == pytest.approx((x1 - x0) * (y1 - y0) * 1.44, rel=0.05)
    pts = astro_landmarks.astype(int)
    assert (mask[pts[:, 1], pts[:, 0]] == 255).all()
    moved = astro_landmarks + np.array([120, 200])
    both = face_mask(np.stack([astro_landmarks, moved]), (512, 512), expand=1.2)
    np.testing.assert_array_equal(both, np.maximum(mask, face_mask(moved, (512, 512), expand=1.2)))


def test_crop_face_returns_crop_landmarks_and_mask_consistently(astronaut, detector, predictor):
    crop = crop_face(astronaut, FaceConfig(crop_size=256), detector, predictor)
    assert crop.image.shape == (256, 256, 3)
    pts = np.round(crop.landmarks).astype(int)
    assert (pts >= 0).all() and (pts < 256).all()
    assert (crop.mask[pts[:, 1], pts[:, 0]] == 255).all()
    # the mask is about (1.2 / (1 + 2 * 0.6))^2 of the crop: the face box with margin, expanded 1.2x
    assert 0.15 < (crop.mask > 0).mean() < 0.45
    x0, y0, x1, y1 = crop.xyxy
    assert x1 - x0 == y1 - y0 == crop.box[2]


# -- phone photos --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phone_jpeg(astronaut, tmp_path_factory):
    """The phone photo as a camera stores it: pixels sideways (3024 wide, 4032 high) and EXIF
    orientation 6 (rotate 90 degrees clockwise to view), JPEG. -> (path, upright photo, face box)."""
    from PIL import Image

    photo, face = phone_photo(astronaut)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(photo, 1)))  # upright turned 90 deg anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path_factory.mktemp("phone") / "IMG_0001.jpg"
    stored.save(path, quality=90, exif=exif)
    return path, photo, face


def test_a_12mp_phone_photo_with_a_180px_face_gives_its_crop_without_options(phone_jpeg, detector, predictor):
    from facepose.media.image import read_image

    path, _, face = phone_jpeg
    image = read_image(str(path))
    assert image.shape == (3024, 4032, 3)  # upright per its EXIF orientation
    assert detector.detect(image) == []  # the working size (640 px) sees a 29 px face: too small for HOG
    box = detector.detect_one(image, name=path.name)  # so the search pyramid finds it
    assert np.abs(_box_centre(box) - _box_centre(face)).max() < 0.15 * (face[2] - face[0])
    assert 0.7 < (box[2] - box[0]) / (face[2] - face[0]) < 1.4
    crop = crop_face(image, FaceConfig(), detector, predictor, name=path.name)
    assert crop.image.shape == (512, 512, 3)
    # upright face in the crop: eyes level, above the nose, the mouth below it
    left, right = _centre(crop.landmarks, LEFT_EYE), _centre(crop.landmarks, RIGHT_EYE)
    nose, mouth = _centre(crop.landmarks, NOSE), _centre(crop.landmarks, MOUTH)
    assert abs(left[1] - right[1]) < 0.1 * abs(left[0] - right[0])
    assert max(left[1], right[1]) < nose[1] < mouth[1]


def test_the_largest_face_wins_in_the_search_pyramid(astronaut, detector):
    photo, big = phone_photo(astronaut, face_px=200, at=(2600, 900))
    small, _ = phone_photo(astronaut, face_px=130, at=(600, 1500))
    photo[1500:2400, 600:1400] = small[1500:2400, 600:1400]
    boxes = detector.detect(photo, search=True)
    assert len(boxes) == 2
    assert np.abs(_box_centre(boxes[0]) - _box_centre(big)).max() < 30


def test_search_levels_double_up_to_the_photos_own_resolution(detector):
    assert detector.search_levels(4032, 3024) == [2560, 4032]  # the working pass saw 640 x 2 (upsample)
    assert detector.search_levels(512, 512) == []  # already seen at twice its own size
    assert detector.search_levels(1920, 1080) == [1920]


def test_the_search_runs_only_when_the_working_size_finds_nothing(astronaut):
    from facepose.face.detect import DETECTORS, register_detector

    calls: list[tuple[int, int]] = []

    @register_detector("counted_hog")
    def counted(image, upsample):
        calls.append(image.shape[:2])
        return DETECTORS["hog"](image, upsample)

    try:
        detector = FaceDetector(FaceConfig(detector="counted_hog"))
        big, _ = phone_photo(astronaut, face_px=700, at=(1200, 300))
        detector.detect_one(big)
        assert calls == [(480, 640)]  # one pass at the working size: the fast path
        calls.clear()
        small, _ = phone_photo(astronaut)
        detector.detect_one(small)
        # the working size, then the 2560 px level in two overlapping tiles (at most 2048 px a side); the
        # face is found there, so the photo's own 4032 px level never runs
        assert calls == [(480, 640), (1920, 2048), (1920, 2048)]
    finally:
        DETECTORS.pop("counted_hog")
