#!/usr/bin/env bash
# Set up .venv and run the main job on embedded defaults: render the bundled example manifest
# (presets, a driving video, speech audio and a pose file) with the CPU warp renderer, through the
# Prefect render flow (no server needed) on a local Ray, into ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/facepose render-batch examples/manifest.csv --out out "$@"
echo
echo "Videos: $(pwd)/out/*.mp4   results table: $(pwd)/out/results.parquet"
ls -1 out/*.mp4
