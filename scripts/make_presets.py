"""Regenerate the bundled pose presets (facepose/pose/presets/*.parquet) from facepose.pose.presets.

Run after changing a preset or the face model, then commit the files:

    python scripts/make_presets.py            # writes into the package
    python scripts/make_presets.py OUT_DIR    # writes elsewhere (to compare)
"""

from __future__ import annotations

import sys
from pathlib import Path

from facepose.pose import presets


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(presets.__file__).resolve().parent / "presets"
    for path in presets.write_presets(out):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
