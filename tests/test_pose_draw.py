"""Pose images drawn as Moore-AnimateAnyone draws DWPose faces, and the pose preview video."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facepose.errors import InputError
from facepose.pose.draw import contour_edges, draw_pose, iter_pose_images, letterbox, scaled_radius, write_pose_video
from facepose.pose.sequence import PoseSequence


def face_points(width: int = 512, height: int = 512, seed: int = 0) -> np.ndarray:
    """68 distinct points spread over the canvas, at least 12 px apart at 512, so dots never touch."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(9), np.arange(8)), -1).reshape(-1, 2)[:68].astype(np.float64)
    pts = 40 + grid * 52 + rng.uniform(0, 8, (68, 2))
    return (pts * [width / 512, height / 512]).astype(np.float32)


def moore_draw_facepose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Moore-AnimateAnyone's draw_facepose on one face, fed normalised coordinates as their pipeline does."""
    canvas = np.zeros((height, width, 3), np.uint8)
    eps = 0.01
    for x, y in landmarks / [width, height]:
        x = int(x * width)
        y = int(y * height)
        if x > eps and y > eps:
            cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)
    return canvas


def n_blobs(image: np.ndarray) -> int:
    mask = (image.max(axis=2) == 255).astype(np.uint8)
    return cv2.connectedComponents(mask, connectivity=8)[0] - 1


def test_matches_moore_animateanyone_pixel_for_pixel_at_512():
    pts = face_points()
    ours = draw_pose(pts, (512, 512))
    assert ours.shape == (512, 512, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, moore_draw_facepose(pts, 512, 512))


def test_black_canvas_with_68_white_dots_of_radius_3():
    image = draw_pose(face_points(), (512, 512))
    values = set(np.unique(image).tolist())
    assert values == {0, 255}
    assert np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2])  # white, not coloured
    assert n_blobs(image) == 68
    one = draw_pose(np.full((68, 2), 100.5, np.float32), (512, 512))
    ys, xs = np.nonzero(one[..., 0])
    assert xs.min() == 97 and xs.max() == 103 and ys.min() == 97 and ys.max() == 103  # radius 3 around (100, 100)


def test_radius_scales_with_canvas_and_never_drops_below_one():
    assert scaled_radius(512, 512) == 3
    assert scaled_radius(1024, 1024) == 6
    assert scaled_radius(512, 768) == 3  # the shorter side decides
    assert scaled_radius(64, 64) == 1
    assert scaled_radius(512, 512, radius=5) == 5
    small = draw_pose(np.full((68, 2), 10.0, np.float32), (40, 40))
    assert small[10, 10, 0] == 255 and small[10, 11, 0] == 255 and small[10, 12, 0] == 0
    big = draw_pose(face_points(1024, 1024), (1024, 1024))
    assert (big[..., 0] == 255).sum() == pytest.approx(4 * (draw_pose(face_points(), (512, 512))[..., 0] == 255).sum(), rel=0.15)


def test_non_square_canvas_has_width_and_height_in_order():
    pts = face_points(300, 200)
    image = draw_pose(pts, (300, 200))
    assert image.shape == (200, 300, 3)
    assert n_blobs(image) > 0


def test_points_with_zero_score_outside_canvas_or_nan_are_skipped():
    pts = face_points()
    scores = np.ones(68, np.float32)
    scores[:5] = 0
    scores[5] = -1
    pts[6] = (-4, 100)
    pts[7] = (100, 512.2)
    pts[8] = (np.nan, 10)
    image = draw_pose(pts, (512, 512), scores=scores)
    assert n_blobs(image) == 68 - 9
    for i in (0, 3, 5):
        x, y = pts[i].astype(int)
        assert image[y, x, 0] == 0
    x, y = pts[20].astype(int)
    assert image[y, x, 0] == 255


def test_bad_shapes_are_input_errors():
    with pytest.raises(InputError, match=r"\(68, 2\)"):
        draw_pose(np.zeros((21, 2)), (512, 512))
    with pytest.raises(InputError, match="scores"):
        draw_pose(np.zeros((68, 2)), (512, 512), scores=np.ones(5))


def test_lines_follow_ibug_contours_in_grey_and_leave_dots_unchanged():
    pts = face_points()
    dots = draw_pose(pts, (512, 512))
    lined = draw_pose(pts, (512, 512), lines=True)
    white = dots[..., 0] == 255
    np.testing.assert_array_equal(lined[white], dots[white])  # every dot is still pure white
    extra = lined[~white]
    assert extra.max() > 0  # lines were drawn ...
    assert extra.max() < 200  # ... in grey-ish colours, darker than the dots
    edges = set(contour_edges())
    assert (0, 1) in edges and (15, 16) in edges and (16, 17) not in edges  # jaw stops at 16
    assert (41, 36) in edges and (47, 42) in edges and (59, 48) in edges and (67, 60) in edges  # closed loops
    assert (21, 22) not in edges and (30, 31) not in edges and (35, 36) not in edges
    assert len(edges) == 16 + 4 + 4 + 3 + 4 + 6 + 6 + 12 + 8
    for i, j in [(0, 1), (36, 37), (41, 36), (60, 61)]:
        mid = ((pts[i] + pts[j]) / 2).astype(int)
        assert lined[mid[1], mid[0]].max() > 0, (i, j)
    for i, j in [(16, 17), (21, 22), (35, 36)]:  # not connected: the midpoint stays black (or on a dot)
        mid = ((pts[i] + pts[j]) / 2).astype(int)
        assert lined[mid[1], mid[0]].max() in (0, 255), (i, j)


def test_lines_skip_points_that_are_not_drawn():
    pts = face_points()
    scores = np.ones(68, np.float32)
    scores[1] = 0
    lined = draw_pose(pts, (512, 512), lines=True, scores=scores)
    mid = ((pts[0] + pts[1]) / 2).astype(int)
    assert lined[mid[1], mid[0]].max() == 0


# -- sequences --------------------------------------------------------------------------------------
def test_letterbox_scales_by_longer_side_and_centres():
    assert letterbox(1000, 500, 512) == (pytest.approx(0.512), pytest.approx(0.0), pytest.approx(128.0))
    assert letterbox(512, 768, 512) == (pytest.approx(2 / 3), pytest.approx(85.3333, abs=1e-3), pytest.approx(0.0))
    assert letterbox(512, 512, 512) == (1.0, 0.0, 0.0)


def test_iter_pose_images_letterboxes_a_wide_canvas_onto_the_square():
    lm = np.zeros((3, 68, 2), np.float32)
    lm[:, :, 0] = 500.0  # every point at the canvas centre of a 1000x500 canvas ...
    lm[:, :, 1] = 250.0
    lm[1, :, 0] = 900.0  # ... except in frame 1: right of centre
    pose = PoseSequence(landmarks=lm, width=1000, height=500, fps=24.0)
    images = list(iter_pose_images(pose, size=512))
    assert len(images) == 3
    assert all(im.shape == (512, 512, 3) and im.dtype == np.uint8 for im in images)
    ys, xs = np.nonzero(images[0][..., 0])
    assert xs.mean() == pytest.approx(256, abs=1) and ys.mean() == pytest.approx(256, abs=1)
    ys, xs = np.nonzero(images[1][..., 0])
    assert xs.mean() == pytest.approx(900 * 0.512, abs=1) and ys.mean() == pytest.approx(256, abs=1)
    assert images[0][:127].max() == 0 and images[0][385:].max() == 0  # the bars stay black


def test_iter_pose_images_of_a_square_canvas_equals_draw_pose():
    pts = face_points()
    scores = np.ones((2, 68), np.float32)
    scores[1] = 0  # a lost frame draws an empty image
    pose = PoseSequence(landmarks=np.stack([pts, pts]), scores=scores, width=512, height=512)
    first, lost = list(iter_pose_images(pose, size=512, lines=True))
    np.testing.assert_array_equal(first, draw_pose(pts, (512, 512), lines=True))
    assert lost.max() == 0


def test_iter_pose_images_scales_the_point_radius_given_at_512():
    lm = np.full((1, 68, 2), 256.0, np.float32)
    pose = PoseSequence(landmarks=lm, width=512, height=512)

    def width(image: np.ndarray) -> int:
        xs = np.nonzero(image[..., 0].max(axis=0))[0]
        return int(xs.max() - xs.min() + 1)

    assert width(next(iter_pose_images(pose, size=512))) == 7  # radius 3
    assert width(next(iter_pose_images(pose, size=1024))) == 13  # radius 6
    assert width(next(iter_pose_images(pose, size=1024, point_radius=5))) == 21  # radius 10


def test_iter_pose_images_is_lazy():
    pose = PoseSequence(landmarks=np.tile(face_points()[None], (10_000, 1, 1)))
    gen = iter_pose_images(pose, size=64)
    assert next(gen).shape == (64, 64, 3)


# -- preview video ----------------------------------------------------------------------------------
def moving_pose(t: int = 12, fps: float = 24.0) -> PoseSequence:
    """A face that slides right by 4 px a frame on a 640x480 canvas."""
    base = face_points(400, 400) + [100, 40]
    lm = np.stack([base + [4 * i, 0] for i in range(t)]).astype(np.float32)
    return PoseSequence(landmarks=lm, fps=fps, width=640, height=480, source="moving")


def test_write_pose_video_streams_every_frame_at_the_pose_fps(tmp_path):
    from facepose.media.video import probe_video, read_frames

    pose = moving_pose(t=12, fps=25.0)
    calls = []
    uri = str(tmp_path / "out" / "pose.mp4")
    n = write_pose_video(pose, uri, size=256, progress=lambda done, total: calls.append((done, total)))
    assert n == 12
    assert calls == [(i, 12) for i in range(1, 13)]
    info = probe_video(uri)
    assert (info.width, info.height, info.frames) == (256, 256, 12)
    assert info.fps == pytest.approx(25.0, abs=0.01)
    frames = read_frames(uri, fps=25.0)
    expected = list(iter_pose_images(pose, size=256))
    assert len(frames) == 12
    for got, want in zip(frames, expected):
        # H.264 blurs the dots a little: compare where they are, not their exact pixels
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).mean() < 4.0
        ys, xs = np.nonzero(want[..., 0] > 127)
        gy, gx = np.nonzero(got[..., 0] > 127)
        assert gx.mean() == pytest.approx(xs.mean(), abs=0.5) and gy.mean() == pytest.approx(ys.mean(), abs=0.5)


def test_write_pose_video_to_s3(s3):
    from facepose.media.video import probe_video

    uri = f"{s3}/previews/pose.mp4"
    assert write_pose_video(moving_pose(t=6), uri, size=128, lines=True) == 6
    info = probe_video(uri)
    assert (info.width, info.height, info.frames) == (128, 128, 6)


def test_write_pose_video_rejects_odd_size_and_empty_pose(tmp_path):
    with pytest.raises(InputError, match="even"):
        write_pose_video(moving_pose(), str(tmp_path / "a.mp4"), size=255)
    empty = PoseSequence(landmarks=np.zeros((0, 68, 2)), source="blank.parquet")
    with pytest.raises(InputError, match="blank.parquet"):
        write_pose_video(empty, str(tmp_path / "b.mp4"))
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists()
