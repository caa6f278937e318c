"""Face detection time on reference photos: the fast path (the face is found at the working size) and
the search path (a 12 MP phone photo whose face is too small there; the pyramid finds it).

    .venv/bin/python bench/bench_detect.py [--photo ../shared/cases/photo_12mp_face180.jpg] [--repeats 3] [--core 0]

Pinned to one core like the other benches. Photos: the astronaut (512 px, face 114 px), a 4032x3024
photo made here with her face scaled to 800 px (found at the working size) and to 180 px (found by the
search), and ``--photo`` files as read from disk (EXIF orientation applied). Times are
``FaceDetector.detect_one`` (detection only) and ``crop_face`` (detection + 68 landmarks + the 512 crop),
best of ``--repeats``, with the detector already loaded. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def pin(core: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.sched_setaffinity(0, {core})
    import cv2

    cv2.setNumThreads(1)


def phone_photo(face_px: int):
    """(3024, 4032, 3) uint8: the astronaut's head scaled so her face is ``face_px`` wide, on noise."""
    import cv2
    import numpy as np
    from skimage import data

    k = face_px / 114.0
    head = cv2.resize(data.astronaut()[20:260, 110:340], None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(np.clip(rng.normal(120, 25, (3024, 4032, 3)), 0, 255).astype(np.uint8), (0, 0), 3)
    y0, x0 = 300, 1200
    h, w = min(head.shape[0], 3024 - y0), min(head.shape[1], 4032 - x0)
    photo[y0:y0 + h, x0:x0 + w] = head[:h, :w]
    return photo


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", action="append", default=[], help="extra photo files (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--core", type=int, default=0)
    args = ap.parse_args()
    pin(args.core)

    from skimage import data

    from facepose.config import FaceConfig
    from facepose.face.crop import crop_face
    from facepose.face.detect import FaceDetector
    from facepose.face.landmarks import LandmarkPredictor
    from facepose.media.image import read_image

    detector, predictor = FaceDetector(FaceConfig()), LandmarkPredictor()
    photos = [("astronaut 512x512, face 114 px", data.astronaut()),
              ("made 4032x3024, face 800 px", phone_photo(800)),
              ("made 4032x3024, face 180 px", phone_photo(180))]
    photos += [(os.path.basename(p), read_image(p)) for p in args.photo]
    detector.detect(photos[0][1])  # load the model
    print(f"{platform.processor() or platform.machine()}, one core, best of {args.repeats}\n")
    print("| photo | path | detect_one (s) | crop_face (s) |")
    print("|---|---|---:|---:|")
    for name, image in photos:
        path = "fast" if detector.detect(image) else "search"
        t_detect = best(lambda image=image, name=name: detector.detect_one(image, name), args.repeats)
        t_crop = best(lambda image=image, name=name: crop_face(image, FaceConfig(), detector, predictor, name), args.repeats)
        print(f"| {name} | {path} | {t_detect:.3f} | {t_crop:.3f} |")


if __name__ == "__main__":
    main()
