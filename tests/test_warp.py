"""The warp renderer on a real face: the astronaut photo driven along known landmark paths.

The main target sequence is the astronaut's own crop landmarks moved along a known path (a small head
roll and sway, a jaw opening, one blink), so what each rendered frame should show is known exactly.
A bundled preset, retargeted onto the same face, drives a second render.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from facepose.config import Config, FaceConfig, RenderConfig, WarpConfig
from facepose.errors import InputError, NoFaceError
from facepose.face.crop import face_mask
from facepose.face.detect import FaceDetector
from facepose.face.landmarks import LandmarkPredictor
from facepose.face_layout import BROWS, INNER_LIP, LEFT_EYE, LOWER_INNER, OUTER_LIP, RIGHT_EYE, UPPER_INNER, eye_opening, mouth_aspect_ratio
from facepose.media.video import probe_video, read_frames, write_video
from facepose.pose.sequence import PoseSequence
from facepose.render import get_renderer
from facepose.render.warp import WarpRenderer

T = 48
MOUTH_PEAK = 12  # frame where the jaw is dropped furthest
BLINK = 38  # frame where the lids are shut
SIZE = 512

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def motion_path(lm: np.ndarray, frames: int = T) -> np.ndarray:
    """lm: (68, 2) crop landmarks -> (T, 68, 2): roll up to 4 degrees and a few pixels of sway about the
    face centre, the jaw dropping (peak at MOUTH_PEAK), the lids shutting (at BLINK). Frame 0 is ``lm``."""
    face_h = float(lm[8, 1] - lm[BROWS, 1].min())
    centre = lm.mean(axis=0)
    out = []
    for t in range(frames):
        x = lm.astype(np.float64).copy()
        drop = 0.09 * face_h * max(0.0, np.sin(np.pi * t / (2 * MOUTH_PEAK))) if t <= 2 * MOUTH_PEAK else 0.0
        jaw_w = np.array([0.25, 0.5, 0.75, 0.9, 1.0, 0.9, 0.75, 0.5, 0.25])  # points 4..12
        x[4:13, 1] += drop * jaw_w
        x[55:60, 1] += drop
        x[65:68, 1] += drop
        shut = max(0.0, 1.0 - abs(t - BLINK) / 3.0)
        for upper, lower in (([37, 38], [41, 40]), ([43, 44], [47, 46])):
            x[upper] += shut * (x[lower] - x[upper])
        a = np.deg2rad(4.0) * np.sin(2 * np.pi * t / frames)
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        shift = np.array([5.0 * np.sin(4 * np.pi * t / frames), 3.0 * np.sin(2 * np.pi * t / frames)])
        out.append((x - centre) @ R.T + centre + shift)
    return np.asarray(out, np.float32)


def detect_landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (T, 68, 2) dlib landmarks, detecting afresh on every frame."""
    det, pred = FaceDetector(), LandmarkPredictor()
    return np.stack([pred.predict(f, det.detect_one(f, name=f"frame {i}")) for i, f in enumerate(frames)])


def poly_mask(points: np.ndarray, shape=(SIZE, SIZE)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(points * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ LUMA


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def renderer() -> WarpRenderer:
    r = get_renderer("warp", None)
    assert isinstance(r, WarpRenderer)
    return r


@pytest.fixture(scope="module")
def crop(renderer, astronaut):
    """(crop image (512, 512, 3), crop landmarks (68, 2)) of the astronaut."""
    return renderer.crop(astronaut, name="astronaut")


@pytest.fixture(scope="module")
def targets(crop) -> np.ndarray:
    return motion_path(crop[1])


@pytest.fixture(scope="module")
def rendered(renderer, astronaut, targets) -> np.ndarray:
    pose = PoseSequence(targets, fps=24.0, width=SIZE, height=SIZE, source="astronaut path")
    return np.stack(list(renderer.render(astronaut, pose)))


@pytest.fixture(scope="module")
def video(rendered, tmp_path_factory):
    """The render written as H.264 and read back: (path, decoded frames)."""
    path = tmp_path_factory.mktemp("warp") / "astronaut.mp4"
    assert write_video(path, rendered, fps=24) == T
    return path, read_frames(path, fps=24.0)


# -- the video ---------------------------------------------------------------------------------------
def test_render_gives_one_frame_per_pose_frame_at_output_size(rendered):
    assert rendered.shape == (T, SIZE, SIZE, 3) and rendered.dtype == np.uint8


def test_video_is_h264_at_24_fps_with_exact_frame_count(video):
    path, frames = video
    info = probe_video(path)
    assert info.fps == pytest.approx(24.0) and info.frames == T and (info.width, info.height) == (SIZE, SIZE)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(video=0)) == T
    assert frames.shape == (T, SIZE, SIZE, 3)


def test_rest_pose_reproduces_the_reference_crop(rendered, crop):
    # frame 0 of the path is the reference's own landmarks: the warp is the identity
    assert np.array_equal(rendered[0], crop[0])


# -- following the target ----------------------------------------------------------------------------
def test_landmarks_on_rendered_frames_follow_the_targets(video, targets, crop):
    _, frames = video
    found = detect_landmarks(frames[::2])  # every other frame: the jaw's peak and the blink included
    err = np.linalg.norm(found - targets[::2], axis=-1).mean(axis=-1)  # mean px error per frame
    # measured: mean 1.7 px, worst frame 2.5 px (dlib's own error on the still crop is about 0.9 px)
    assert err.mean() < 3.0, err.round(2)
    assert err.max() < 4.5, err.round(2)
    # the frames really moved: the unwarped crop is far from the moving targets
    still = np.linalg.norm(crop[1][None] - targets, axis=-1).mean(axis=-1)
    assert still.mean() > 2.5 * err.mean()


def test_pixels_outside_the_face_mask_hold_still(rendered, video, targets, crop):
    image, lm = crop
    outside = face_mask(np.concatenate([lm[None], targets]), (SIZE, SIZE), 1.2) == 0
    assert outside.mean() > 0.4  # most of the frame is background
    # as rendered: exactly the reference crop's pixels
    assert all(np.array_equal(f[outside], image[outside]) for f in rendered)
    # after H.264: only codec noise from frame to frame
    _, frames = video
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0))[:, outside]
    assert diff.mean() < 0.2, diff.mean()  # measured: 0.01
    assert np.percentile(diff, 99.9) <= 4  # measured: 2


def test_open_mouth_shows_a_dark_interior_below_the_lips(rendered, targets):
    frame, lm = rendered[MOUTH_PEAK], targets[MOUTH_PEAK]
    assert mouth_aspect_ratio(lm) > mouth_aspect_ratio(targets[0]) + 0.1  # the path does open the mouth
    # centre of the opening (between the inner lips' middles), a box a third of the gap high
    c = 0.5 * (lm[62] + lm[66])
    gap, w = float(lm[66, 1] - lm[62, 1]), float(lm[64, 0] - lm[60, 0])
    y0, y1 = int(c[1] - gap / 6), int(c[1] + gap / 6) + 1
    x0, x1 = int(c[0] - w / 6), int(c[0] + w / 6) + 1
    cavity = luma(frame[y0:y1, x0:x1]).mean()
    lips = poly_mask(lm[OUTER_LIP]) & ~poly_mask(lm[INNER_LIP])
    lip_luma = luma(frame)[lips].mean()
    assert cavity < lip_luma - 50, (cavity, lip_luma)
    # the same spot at rest shows the astronaut's teeth, not a hole
    lm0 = targets[0]
    c0 = (0.5 * (lm0[62] + lm0[66])).astype(int)
    assert luma(rendered[0][c0[1] - 1 : c0[1] + 2, c0[0] - 3 : c0[0] + 4]).mean() > cavity + 60


def test_closing_the_lips_shows_a_dark_seam_not_the_references_teeth(renderer, astronaut, crop):
    image, lm = crop
    shut = lm.copy()
    mid = 0.5 * (lm[UPPER_INNER] + lm[LOWER_INNER])
    shut[UPPER_INNER], shut[LOWER_INNER] = mid, mid  # the astronaut smiles with her teeth showing
    frame = next(iter(renderer.render(astronaut, PoseSequence(shut[None], width=SIZE, height=SIZE))))
    seam = np.round(mid).astype(int)
    seam_luma = luma(frame)[seam[:, 1], seam[:, 0]].mean()
    lips = poly_mask(shut[OUTER_LIP]) & ~poly_mask(shut[INNER_LIP])
    assert seam_luma < luma(frame)[lips].mean() - 20  # measured: 35 darker (without the seam: 15 brighter)
    assert seam_luma < luma(image)[seam[:, 1], seam[:, 0]].mean() - 60  # teeth were there


def test_blink_target_closes_the_eyes(rendered, targets, video):
    open_, shut = rendered[0], rendered[BLINK]
    for eye in (RIGHT_EYE, LEFT_EYE):
        region_open = poly_mask(targets[0][eye])
        # where the open eye was (its polygon, at the blink frame's position of the eye corners)
        moved = targets[0][eye] + (targets[BLINK][eye[[0, 3]]].mean(0) - targets[0][eye[[0, 3]]].mean(0))
        region_shut = poly_mask(moved)
        # open: dark iris and pupil beside white sclera; shut: lid skin and a thin lash line
        y_open, y_shut = luma(open_)[region_open], luma(shut)[region_shut]
        assert (y_shut < 90).mean() < 0.6 * (y_open < 90).mean()  # measured: 0.15 vs 0.36
        assert y_shut.std() < 0.7 * y_open.std()  # measured: 31 vs 53
        assert y_shut.mean() > y_open.mean() + 8  # measured: 130 vs 117
    # and dlib sees the eyes closed
    _, frames = video
    found = detect_landmarks(frames[[0, BLINK]])
    assert (eye_opening(found[1]) < 0.5 * eye_opening(found[0])).all(), eye_opening(found)


# -- the mesh ----------------------------------------------------------------------------------------
def test_mesh_keeps_lip_and_eye_contours_as_edges(crop):
    from facepose.render.warp_mesh import border_anchors, triangulate

    tri = triangulate(crop[1], border_anchors((0, 0, SIZE, SIZE)))
    edges = {tuple(sorted((int(a), int(b)))) for t in tri for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    for group in (OUTER_LIP, INNER_LIP, RIGHT_EYE, LEFT_EYE):
        ring = [int(i) for i in group]
        missing = [(a, b) for a, b in zip(ring, ring[1:] + ring[:1]) if tuple(sorted((a, b))) not in edges]
        assert not missing, missing  # else opening the mouth would drag skin into it


def test_backward_map_sends_each_target_landmark_to_its_reference_point(crop):
    from facepose.render.warp_mesh import MeshWarp, border_anchors, face_points, triangulate

    lm = crop[1]
    anchors = border_anchors((0, 0, SIZE, SIZE))
    src = np.concatenate([face_points(lm), anchors])
    mesh = MeshWarp(src, triangulate(lm, anchors), (0, 0, SIZE, SIZE), grid_step=1)
    target = np.round(motion_path(lm)[MOUTH_PEAK])  # on pixel centres, where the map is sampled
    d = mesh.displacement(np.concatenate([face_points(target), anchors]))
    ix, iy = target[:, 0].astype(int), target[:, 1].astype(int)
    np.testing.assert_allclose(target + d[iy, ix], lm, atol=0.02)


# -- a preset ----------------------------------------------------------------------------------------
def test_preset_drives_the_face_with_background_still(renderer, astronaut, crop, tmp_path):
    from facepose.pose.presets import load_preset
    from facepose.pose.retarget import retarget

    image, lm = crop
    pose = retarget(load_preset("surprise").slice(0, 48), lm, (SIZE, SIZE))
    frames = np.stack(list(renderer.render(astronaut, pose)))
    path = tmp_path / "surprise.mp4"
    write_video(path, frames, fps=pose.fps)
    info = probe_video(path)
    assert info.frames == 48 and info.fps == pytest.approx(24.0)
    decoded = read_frames(path, fps=24.0)[::4]
    want = pose.landmarks[::4]
    err = np.linalg.norm(detect_landmarks(decoded) - want, axis=-1).mean(axis=-1)
    assert err.mean() < 3.5, err.round(2)
    assert np.linalg.norm(want - lm, axis=-1).mean() > 2.5 * err.mean()  # the preset really moves the face
    outside = face_mask(np.concatenate([lm[None], pose.landmarks]), (SIZE, SIZE), 1.2) == 0
    assert all(np.array_equal(f[outside], image[outside]) for f in frames)


# -- contract ----------------------------------------------------------------------------------------
def test_empty_pose_is_an_input_error(renderer, astronaut):
    empty = PoseSequence(np.zeros((0, 68, 2), np.float32), source="empty.parquet")
    with pytest.raises(InputError, match="empty.parquet.*0 frames"):
        renderer.render(astronaut, empty)


def test_reference_without_a_face_is_a_no_face_error_naming_it(renderer, astronaut, targets):
    sky = np.ascontiguousarray(astronaut[:, 330:460])  # the backdrop and the shuttle, no face
    pose = PoseSequence(targets[:2], width=SIZE, height=SIZE)
    with pytest.raises(NoFaceError, match="shuttle.png"):
        renderer.render(sky, pose, name="shuttle.png")


def test_reference_path_names_itself_in_errors(renderer, tmp_path, targets):
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(path)
    with pytest.raises(NoFaceError, match="grey.png"):
        renderer.render(str(path), PoseSequence(targets[:2], width=SIZE, height=SIZE))


def test_output_is_deterministic(renderer, astronaut, targets, rendered):
    pose = PoseSequence(targets[MOUTH_PEAK - 1 : BLINK + 1 : 13], width=SIZE, height=SIZE)
    again = np.stack(list(renderer.render(astronaut, pose, seed=123)))
    assert np.array_equal(again, rendered[MOUTH_PEAK - 1 : BLINK + 1 : 13])


def test_pose_canvas_is_letterboxed_onto_the_output(renderer, astronaut, targets, rendered):
    # a 1024x768 canvas maps onto 512x512 as output = canvas / 2 + (0, 64): the same path on it
    # renders the same frames
    canvas = (targets[:6] - np.array([0.0, 64.0], np.float32)) * 2.0
    pose = PoseSequence(canvas, width=1024, height=768)
    frames = np.stack(list(renderer.render(astronaut, pose)))
    assert np.abs(frames.astype(int) - rendered[:6]).max() <= 1


def test_lost_frames_hold_the_last_seen_pose_and_progress_counts_every_frame(renderer, astronaut, targets):
    lm = targets[[0, MOUTH_PEAK, 5, 6]].copy()
    scores = np.ones((4, 68), np.float32)
    scores[2:] = 0.0
    lm[3] = np.nan  # a lost frame may hold anything
    calls = []
    pose = PoseSequence(lm, scores=scores, width=SIZE, height=SIZE)
    frames = list(renderer.render(astronaut, pose, progress=lambda d, n: calls.append((d, n))))
    assert np.array_equal(frames[2], frames[1]) and np.array_equal(frames[3], frames[1])
    assert not np.array_equal(frames[1], frames[0])
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_output_size_follows_the_config(astronaut, targets):
    pose = PoseSequence(targets[:3], width=SIZE, height=SIZE)
    cfg = Config(render=RenderConfig(warp=WarpConfig(size=256)))
    for r in (WarpRenderer(WarpConfig(size=256)), get_renderer("warp", cfg)):
        frames = list(r.render(astronaut, pose))
        assert len(frames) == 3 and frames[0].shape == (256, 256, 3)
    with pytest.raises(InputError, match="even"):
        WarpRenderer(WarpConfig(size=255))


def test_renderer_factory_reads_its_sections_and_refuses_the_wrong_object():
    cfg = Config(face=FaceConfig(mask_expand=1.5), render=RenderConfig(warp=WarpConfig(size=256)))
    r = get_renderer("warp", cfg)
    assert r.cfg.size == 256 and r.face_cfg.mask_expand == 1.5  # render.warp and face both reach the renderer
    with pytest.raises(TypeError, match="whole Config"):
        get_renderer("warp", cfg.render)  # a section instead of the config: no silent defaults
    with pytest.raises(TypeError, match="WarpConfig, FaceConfig"):
        WarpRenderer(cfg.render, cfg.face)
