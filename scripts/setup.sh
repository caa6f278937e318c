#!/usr/bin/env bash
# Create (or update) the virtual environment at .venv with facepose installed in it.
#   bash scripts/setup.sh          # the package and its runtime dependencies
#   bash scripts/setup.sh --test   # plus test dependencies and the system tools tests use
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
want_test=0
if [[ "${1:-}" == "--test" ]]; then extras="[test]"; want_test=1; fi

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate; break
    fi
  done
fi
[[ -n "$python" ]] || { echo "error: facepose needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[[ -x .venv/bin/python ]] || "$python" -m venv .venv

# Skip the pip work when pyproject.toml has not changed since the last install of this flavour.
stamp=".venv/.facepose-installed${extras:+-test}"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$digest" ]] || ! .venv/bin/python -c 'import facepose' 2>/dev/null; then
  echo "==> installing facepose$extras into .venv (first time: about 3 minutes, 3.5 GB)"
  log=.venv/install.log
  {
    .venv/bin/python -m pip install --upgrade pip &&
    # torch first and pinned: 2.13.0 is the CPU build that lies on this machine's disk; an unpinned
    # torch would pull a several-GB CUDA build.
    .venv/bin/python -m pip install torch==2.13.0 &&
    .venv/bin/python -m pip install -e ".$extras"
  } > "$log" 2>&1 || { tail -n 40 "$log" >&2; echo "error: installing facepose failed (full log: $log)" >&2; exit 1; }
  .venv/bin/python -c 'import facepose' || { echo "error: facepose does not import after install (log: $log)" >&2; exit 1; }
  echo "$digest" > "$stamp"
fi

# Fonts for subtitles burnt into lesson videos (--captions burn): Noto for Latin, Arabic, Hebrew (core)
# and Chinese/Japanese/Korean (cjk). Speech itself needs no system package (espeakng-loader's wheel).
fonts=()
[[ -f /usr/share/fonts/truetype/noto/NotoSansArabic-Regular.ttf ]] || fonts+=(fonts-noto-core)
[[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ]] || fonts+=(fonts-noto-cjk)
if (( ${#fonts[@]} )) && command -v apt-get >/dev/null; then
  echo "==> installing caption fonts: ${fonts[*]}"
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  { $sudo apt-get update -q >/dev/null &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${fonts[@]}" >/dev/null; } ||
    echo "warning: could not install ${fonts[*]}; burnt-in captions in those scripts need them (or set tts.caption_font)" >&2
fi

if [[ $want_test == 1 ]]; then
  # System tools the tests use: espeak-ng (real speech) and Debian's Chromium (the browser tests).
  missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v chromium >/dev/null || missing+=(chromium)
  if (( ${#missing[@]} )); then
    echo "==> installing system packages: ${missing[*]}"
    sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
echo "==> .venv ready: $(.venv/bin/facepose --help >/dev/null && echo .venv/bin/facepose)"
