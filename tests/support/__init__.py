"""Test support: inputs with known answers and helpers the test modules share (no test imports another).

- :mod:`tests.support.synth`: driving videos of the real astronaut photo moved along known paths (one face
  centre, measured), phone photos, multi-shot clips with known cuts, a face-free shot.
- :mod:`tests.support.speech`: real speech from espeak-ng.
- :mod:`tests.support.datasets`: a curated dataset made by the curation code from those videos.
- :mod:`tests.support.diffusion`: tiny inputs for the diffusion backend and Moore-AnimateAnyone's layout.
- :mod:`tests.support.cli`: the ``facepose`` command as a subprocess, and its one-line-error contract.
- :mod:`tests.support.net`: a free loopback port.

Fixtures (the photo, speech, S3, Ray, Prefect) live in ``tests/conftest.py``.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root
