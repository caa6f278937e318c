"""DWPose backend: pre- and post-processing on small arrays, missing weights, and the ONNX Runtime wiring
end to end on two tiny ONNX models written in the test (the real weights cannot be downloaded here).

The tiny models are real ONNX files run by the real onnxruntime. The `onnx` package is not installed, so
they are encoded straight to ONNX's protobuf wire format (a few dozen lines below).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facepose.config import FaceConfig
from facepose.errors import ModelNotFoundError
from facepose.face import dwpose
from facepose.face.dwpose import (
    DETECTOR_FILE,
    FACE_SLICE,
    POSE_FILE,
    DWPoseConfig,
    DWPoseLandmarks,
    apply_affine,
    box_to_center_scale,
    fix_aspect_ratio,
    model_files,
    nms,
    normalize,
    simcc_decode,
    top_down_crop,
    warp_matrix,
    yolox_decode,
    yolox_grids,
    yolox_postprocess,
    yolox_preprocess,
)


# -- COCO-WholeBody layout --------------------------------------------------------------------------
def test_face_points_are_wholebody_keypoints_23_to_90():
    assert slice(23, 91) == FACE_SLICE  # 17 body + 6 feet before them, 2 x 21 hand points after
    assert len(range(133)[FACE_SLICE]) == 68
    assert dwpose.N_WHOLEBODY == 17 + 6 + 68 + 21 + 21


# -- top-down crop ----------------------------------------------------------------------------------
def test_center_scale_pads_by_1_25_and_fixes_aspect_without_shrinking():
    center, scale = box_to_center_scale((100, 50, 300, 450))
    np.testing.assert_allclose(center, [200, 250])
    np.testing.assert_allclose(scale, [250, 500])
    np.testing.assert_allclose(fix_aspect_ratio(scale, 288 / 384), [375, 500])  # too narrow: widened
    np.testing.assert_allclose(fix_aspect_ratio(np.array([600.0, 500.0]), 0.75), [600, 800])  # too wide: taller


@pytest.mark.parametrize("box", [(100, 50, 300, 450), (10.5, 20.25, 410.0, 90.0), (-30, -40, 60, 80)])
def test_affine_maps_box_centre_to_input_centre_and_back(box):
    image = np.zeros((500, 600, 3), np.uint8)
    crop = top_down_crop(image, box, (288, 384))
    assert crop.image.shape == (384, 288, 3)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    np.testing.assert_allclose(apply_affine(centre, crop.matrix), [144, 192], atol=1e-3)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-100, 700, (50, 2))
    back = apply_affine(apply_affine(pts, crop.matrix), crop.inverse)
    assert np.abs(back - pts).max() < 1e-3
    # the padded, aspect-fixed box fills the input exactly: its corners land on the input's corners
    half = crop.scale / 2
    corners = np.array([crop.center - half, crop.center + half])
    np.testing.assert_allclose(apply_affine(corners, crop.matrix), [[0, 0], [288, 384]], atol=1e-3)


def test_affine_crop_moves_image_content_where_the_matrix_says():
    image = np.zeros((400, 500, 3), np.uint8)
    cv2.circle(image, (220, 160), 6, (255, 255, 255), -1)
    crop = top_down_crop(image, (150, 100, 350, 380), (288, 384))
    ys, xs = np.nonzero(crop.image[..., 0] > 128)
    expected = apply_affine(np.array([220.0, 160.0]), crop.matrix)
    assert abs(xs.mean() - expected[0]) < 1.0 and abs(ys.mean() - expected[1]) < 1.0


def test_warp_matrix_is_mmpose_similarity_without_rotation():
    m = warp_matrix(np.array([200.0, 250.0]), np.array([375.0, 500.0]), (288, 384))
    s = 288 / 375
    np.testing.assert_allclose(m, [[s, 0, 144 - 200 * s], [0, s, 192 - 250 * s]], atol=1e-4)
    inv = warp_matrix(np.array([200.0, 250.0]), np.array([375.0, 500.0]), (288, 384), inv=True)
    np.testing.assert_allclose(cv2.invertAffineTransform(m), inv, atol=1e-4)


def test_normalize_uses_imagenet_mean_and_std_in_nchw():
    crop = np.zeros((4, 3, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 123.675 + 58.395, 116, 0
    x = normalize(crop)
    assert x.shape == (1, 3, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0, atol=0.01)
    np.testing.assert_allclose(x[0, 1], (116 - 116.28) / 57.12, atol=1e-5)
    np.testing.assert_allclose(x[0, 2], -103.53 / 57.375, atol=1e-5)


# -- SimCC ------------------------------------------------------------------------------------------
def test_simcc_decoding_recovers_one_hot_coordinates():
    rng = np.random.default_rng(1)
    n, k = 2, 133
    xs = rng.integers(0, 576, (n, k))
    ys = rng.integers(0, 768, (n, k))
    sx = np.zeros((n, k, 576), np.float32)
    sy = np.zeros((n, k, 768), np.float32)
    vx = rng.uniform(0.2, 1.0, (n, k)).astype(np.float32)
    vy = rng.uniform(0.2, 1.0, (n, k)).astype(np.float32)
    for i in range(n):
        sx[i, np.arange(k), xs[i]] = vx[i]
        sy[i, np.arange(k), ys[i]] = vy[i]
    locs, scores = simcc_decode(sx, sy, 2.0)
    assert locs.shape == (n, k, 2) and scores.shape == (n, k)
    np.testing.assert_array_equal(locs[..., 0], xs / 2.0)
    np.testing.assert_array_equal(locs[..., 1], ys / 2.0)
    np.testing.assert_allclose(scores, np.minimum(vx, vy))


def test_simcc_decoding_of_gaussian_logits_finds_the_peak():
    bins_x, bins_y = np.arange(576), np.arange(768)
    truth = np.array([[101.5, 333.0], [20.0, 383.5], [287.5, 0.0]])  # model-input pixels
    sx = np.stack([np.exp(-((bins_x - 2 * x) ** 2) / (2 * 6.0**2)) for x, _ in truth])[None]
    sy = np.stack([np.exp(-((bins_y - 2 * y) ** 2) / (2 * 6.93**2)) for _, y in truth])[None]
    locs, scores = simcc_decode(sx * 0.8, sy * 0.9)
    np.testing.assert_allclose(locs[0], truth, atol=1e-6)
    np.testing.assert_allclose(scores[0], 0.8, atol=1e-6)


def test_simcc_points_without_positive_response_are_minus_one():
    sx = np.full((1, 3, 576), -0.5, np.float32)
    sy = np.zeros((1, 3, 768), np.float32)
    sx[0, 1, 40] = 0.7
    sy[0, 1, 90] = 0.6
    locs, scores = simcc_decode(sx, sy)
    np.testing.assert_array_equal(locs[0, 0], [-1, -1])
    np.testing.assert_array_equal(locs[0, 1], [20, 45])
    assert scores[0, 0] <= 0 and scores[0, 1] == pytest.approx(0.6)


# -- YOLOX ------------------------------------------------------------------------------------------
def test_yolox_preprocess_letterboxes_top_left_with_114_and_keeps_bgr():
    image = np.zeros((300, 400, 3), np.uint8)
    image[..., 0] = 10  # B
    image[..., 2] = 200  # R
    blob, ratio = yolox_preprocess(image)
    assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32
    assert ratio == pytest.approx(1.6)
    assert blob[0, 0, 0, 0] == 10 and blob[0, 2, 0, 0] == 200  # channels untouched: BGR in, BGR out
    assert blob[0, :, 479, 639].tolist() == [10, 0, 200]  # last resized row
    assert np.all(blob[0, :, 480:, :] == 114)  # padding below


ANCHORS = 80 * 80 + 40 * 40 + 20 * 20


def anchor_index(stride: int, gx: int, gy: int) -> int:
    offset = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    return offset + gy * (640 // stride) + gx


def plant(
    raw: np.ndarray, stride: int, gx: int, gy: int, cx: float, cy: float, w: float, h: float, obj: float, cls: int = 0, p: float = 0.95
) -> None:
    """Write the raw head output that decodes to a box centred at (cx, cy) of size w x h (input pixels)."""
    row = raw[0, anchor_index(stride, gx, gy)]
    row[0], row[1] = cx / stride - gx, cy / stride - gy
    row[2], row[3] = np.log(w / stride), np.log(h / stride)
    row[4] = obj
    row[5 + cls] = p


def empty_yolox_output() -> np.ndarray:
    raw = np.zeros((1, ANCHORS, 85), np.float32)
    raw[..., 4] = 0.01  # background objectness
    raw[..., 5:] = 0.01
    return raw


def test_yolox_grid_matches_the_8400_anchor_layout():
    grid, stride = yolox_grids()
    assert grid.shape == (8400, 2) and stride.shape == (8400, 1)
    i = anchor_index(32, 5, 7)
    assert grid[i].tolist() == [5, 7] and stride[i, 0] == 32
    assert grid[anchor_index(16, 39, 39)].tolist() == [39, 39]


def test_yolox_decode_recovers_a_planted_box():
    raw = empty_yolox_output()
    plant(raw, 32, 5, 7, cx=176.0, cy=232.0, w=200.0, h=320.0, obj=0.9)
    dec = yolox_decode(raw)
    np.testing.assert_allclose(dec[anchor_index(32, 5, 7), :4], [176, 232, 200, 320], rtol=1e-5)
    boxes, scores = yolox_postprocess(raw, ratio=0.8)
    assert boxes.shape == (1, 4)
    np.testing.assert_allclose(boxes[0], np.array([76, 72, 276, 392]) / 0.8, rtol=1e-5)
    assert scores[0] == pytest.approx(0.9 * 0.95)


def test_yolox_postprocess_suppresses_duplicates_and_keeps_only_people():
    raw = empty_yolox_output()
    plant(raw, 32, 5, 7, cx=176.0, cy=232.0, w=200.0, h=320.0, obj=0.9)
    plant(raw, 16, 11, 14, cx=180.0, cy=236.0, w=196.0, h=316.0, obj=0.8)  # the same person again
    plant(raw, 32, 15, 5, cx=500.0, cy=170.0, w=100.0, h=250.0, obj=0.7)  # a second person
    plant(raw, 8, 40, 70, cx=324.0, cy=564.0, w=60.0, h=40.0, obj=0.95, cls=2, p=0.99)  # a car
    plant(raw, 8, 10, 10, cx=84.0, cy=84.0, w=30.0, h=30.0, obj=0.5, p=0.5)  # person below 0.3
    boxes, scores = yolox_postprocess(raw, ratio=1.0)
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes[0], [76, 72, 276, 392], rtol=1e-5)
    np.testing.assert_allclose(boxes[1], [450, 45, 550, 295], rtol=1e-5)
    assert scores[0] > scores[1]


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 4]], np.float32)
    scores = np.array([0.5, 0.9, 0.6, 0.8], np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [1, 3, 2]  # box 0 overlaps box 1 by 0.68; box 3 by 0.26


# -- missing weights --------------------------------------------------------------------------------
def test_no_dwpose_dir_says_which_config_key_and_files():
    with pytest.raises(ModelNotFoundError) as err:
        DWPoseLandmarks(None)
    msg = str(err.value)
    assert "face.dwpose_dir" in msg and DETECTOR_FILE in msg and POSE_FILE in msg
    assert "\n" not in msg


def test_missing_folder_names_the_folder_and_both_files(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(ModelNotFoundError) as err:
        DWPoseLandmarks(str(folder))
    msg = str(err.value)
    assert str(folder) in msg and "face.dwpose_dir" in msg
    assert f"{DETECTOR_FILE}, {POSE_FILE} not found" in msg


def test_missing_pose_file_names_only_that_file(tmp_path):
    (tmp_path / DETECTOR_FILE).write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=rf"{POSE_FILE} not found") as err:
        model_files(str(tmp_path))
    assert f"{DETECTOR_FILE}, " not in str(err.value)


def test_corrupt_onnx_file_is_model_not_found_error_naming_it(tmp_path):
    (tmp_path / DETECTOR_FILE).write_bytes(b"not a model")
    (tmp_path / POSE_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match=DETECTOR_FILE):
        DWPoseLandmarks(str(tmp_path))


def test_registered_as_dwpose_landmark_model_reading_face_dwpose_dir(tmp_path):
    from facepose.face.landmarks import get_landmark_model

    with pytest.raises(ModelNotFoundError, match=str(tmp_path)):
        get_landmark_model(FaceConfig(landmark_model="dwpose", dwpose_dir=str(tmp_path)))


# -- ONNX Runtime wiring on tiny hand-written ONNX models ---------------------------------------------
# Protobuf wire format: each field is a varint key (number << 3 | wire type) then a varint or a
# length-delimited payload. Field numbers are those of onnx/onnx.proto.
def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _int(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(v)


def _bytes(field: int, payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


FLOAT, INT64 = 1, 7


def _tensor(name: str, array: np.ndarray) -> bytes:
    dtype = FLOAT if array.dtype == np.float32 else INT64
    dims = b"".join(_int(1, d) for d in array.shape)
    data = np.ascontiguousarray(array).astype("<f4" if dtype == FLOAT else "<i8").tobytes()
    return dims + _int(2, dtype) + _bytes(8, name) + _bytes(9, data)


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, FLOAT) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _attr(name: str, value: int | list[int]) -> bytes:
    if isinstance(value, list):
        return _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, 7)  # INTS
    return _bytes(1, name) + _int(3, value) + _int(20, 2)  # INT


def _node(op: str, inputs: list[str], outputs: list[str], **attrs: int | list[int]) -> bytes:
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    body += _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op)
    return body + b"".join(_bytes(5, _attr(k, v)) for k, v in attrs.items())


def onnx_model(
    nodes: list[bytes], inputs: list[tuple[str, tuple]], outputs: list[tuple[str, tuple]], initializers: dict[str, np.ndarray]
) -> bytes:
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "tiny")
    graph += b"".join(_bytes(5, _tensor(k, v)) for k, v in initializers.items())
    graph += b"".join(_bytes(11, _value_info(n, s)) for n, s in inputs)
    graph += b"".join(_bytes(12, _value_info(n, s)) for n, s in outputs)
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 8) + _bytes(2, "facepose-tests") + _bytes(7, graph) + _bytes(8, opset)


def tiny_pose_model(channel: int = 0) -> bytes:
    """(1, 3, 384, 288) -> simcc_y (1, 133, 768), simcc_x (1, 133, 576) (y first, on purpose): every
    keypoint's SimCC peaks at the brightest row and column of input channel ``channel``, each pixel
    repeated over its 2 bins, so decoding finds that pixel in model-input coordinates."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        _node("Gather", ["input", "channel"], ["plane"], axis=1),  # (1, 1, 384, 288)
        _node("ReduceMax", ["plane"], ["cols"], axes=[1, 2], keepdims=1),  # (1, 1, 1, 288)
        _node("Reshape", ["cols", "shape_c"], ["cols4"]),  # (1, 1, 288, 1)
        _node("Concat", ["cols4", "cols4"], ["cols2"], axis=3),  # (1, 1, 288, 2)
        _node("Reshape", ["cols2", "shape_x"], ["x1"]),  # (1, 1, 576)
        _node("Expand", ["x1", "expand_x"], ["simcc_x"]),  # (1, 133, 576)
        _node("ReduceMax", ["plane"], ["rows"], axes=[1, 3], keepdims=1),  # (1, 1, 384, 1)
        _node("Concat", ["rows", "rows"], ["rows2"], axis=3),  # (1, 1, 384, 2)
        _node("Reshape", ["rows2", "shape_y"], ["y1"]),  # (1, 1, 768)
        _node("Expand", ["y1", "expand_y"], ["simcc_y"]),  # (1, 133, 768)
    ]
    inits = {
        "channel": i64(channel),
        "shape_c": i64(1, 1, 288, 1),
        "shape_x": i64(1, 1, 576),
        "expand_x": i64(1, 133, 576),
        "shape_y": i64(1, 1, 768),
        "expand_y": i64(1, 133, 768),
    }
    return onnx_model(nodes, [("input", (1, 3, 384, 288))], [("simcc_y", (1, 133, 768)), ("simcc_x", (1, 133, 576))], inits)


def tiny_detector(raw: np.ndarray) -> bytes:
    """(1, 3, 640, 640) -> the fixed YOLOX head output ``raw`` (1, 8400, 85) (plus 0 x the input's max)."""
    nodes = [
        _node("ReduceMax", ["images"], ["m"], keepdims=1),  # (1, 1, 1, 1)
        _node("Mul", ["m", "zero"], ["m0"]),
        _node("Reshape", ["m0", "shape1"], ["m1"]),  # (1, 1, 1)
        _node("Add", ["head", "m1"], ["output"]),  # (1, 8400, 85)
    ]
    inits = {"zero": np.zeros((1,), np.float32), "shape1": np.array([1, 1, 1], np.int64), "head": raw.astype(np.float32)}
    return onnx_model(nodes, [("images", (1, 3, 640, 640))], [("output", (1, ANCHORS, 85))], inits)


def blob(image: np.ndarray, x: float, y: float, colour: tuple[int, int, int], sigma: float = 4.0) -> None:
    """Add a smooth coloured spot peaking at (x, y) (its argmax is the pixel nearest (x, y))."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    image[:] = np.maximum(image, (g[..., None] * np.array(colour)).astype(np.uint8))


@pytest.fixture
def tiny_dwpose_dir(tmp_path) -> Path:
    """A weights folder whose detector finds one person at (95, 90)-(345, 490) in an 800x600 image."""
    raw = empty_yolox_output()
    plant(raw, 32, 5, 7, cx=176.0, cy=232.0, w=200.0, h=320.0, obj=0.9)  # input pixels; ratio 0.8
    (tmp_path / DETECTOR_FILE).write_bytes(tiny_detector(raw))
    (tmp_path / POSE_FILE).write_bytes(tiny_pose_model(channel=0))
    return tmp_path


def scene() -> np.ndarray:
    """800x600 RGB: a red spot at (231, 201) and a blue one at (180, 400), both inside the person box."""
    image = np.zeros((600, 800, 3), np.uint8)
    blob(image, 231, 201, (255, 0, 0))
    blob(image, 180, 400, (0, 0, 255))
    return image


def test_sessions_run_end_to_end_and_map_points_back_to_image_pixels(tiny_dwpose_dir):
    model = DWPoseLandmarks(str(tiny_dwpose_dir))
    image = scene()
    boxes, scores = model.detect_people(image)
    np.testing.assert_allclose(boxes, [[95, 90, 345, 490]], atol=1e-3)
    points, raw = model.predict_wholebody(image, boxes[0])
    assert points.shape == (133, 2) and raw.shape == (133,)
    face = model.predict(image, box=(200, 170, 260, 230))  # the LandmarkModel call: a face box
    assert face.shape == (68, 2) and face.dtype == np.float32
    # the pose model sees RGB, so its channel 0 is red: every point lands on the red spot
    assert np.abs(face - [231, 201]).max() < 1.5
    face2, face_scores = model.predict_with_scores(image)
    np.testing.assert_allclose(face2, face)
    assert face_scores.shape == (68,) and np.all(face_scores == 1.0)  # clipped to [0, 1]


def test_bgr_pose_input_reproduces_dwpose_annotator_colour_order(tiny_dwpose_dir):
    model = DWPoseLandmarks(str(tiny_dwpose_dir), DWPoseConfig(pose_input="bgr"))
    face = model.predict(scene())
    assert np.abs(face - [180, 400]).max() < 1.5  # channel 0 is now blue


def test_face_box_outside_every_person_falls_back_to_a_box_around_the_face(tiny_dwpose_dir):
    model = DWPoseLandmarks(str(tiny_dwpose_dir))
    box = model.person_box(scene(), face_box=(600, 100, 700, 200))
    np.testing.assert_allclose(box, [550, 50, 750, 250])
    np.testing.assert_allclose(model.person_box(scene()), [95, 90, 345, 490], atol=1e-3)


def test_no_person_detected_uses_the_whole_image(tmp_path):
    (tmp_path / DETECTOR_FILE).write_bytes(tiny_detector(empty_yolox_output()))
    (tmp_path / POSE_FILE).write_bytes(tiny_pose_model())
    model = DWPoseLandmarks(str(tmp_path))
    image = scene()
    assert len(model.detect_people(image)[0]) == 0
    np.testing.assert_allclose(model.person_box(image), [0, 0, 800, 600])
    face = model.predict(image)
    assert np.abs(face - [231, 201]).max() < 2.0


def test_weights_load_from_s3(s3, tiny_dwpose_dir):
    from facepose import storage

    for name in (DETECTOR_FILE, POSE_FILE):
        storage.write_bytes(f"{s3}/dwpose/{name}", (tiny_dwpose_dir / name).read_bytes())
    model = DWPoseLandmarks(f"{s3}/dwpose")
    assert np.abs(model.predict(scene()) - [231, 201]).max() < 1.5


def test_grey_image_is_accepted(tiny_dwpose_dir):
    model = DWPoseLandmarks(str(tiny_dwpose_dir))
    grey = np.zeros((600, 800), np.uint8)
    blob(grey[..., None], 300, 250, (255,))
    assert np.abs(model.predict(grey) - [300, 250]).max() < 1.5
