"""Training of the diffusion model (stages 1 and 2) and of Audio2Pose on a curated dataset.

- :mod:`facepose.train.config`: :class:`TrainConfig` (the ``train:`` section; ``configs/train/*.yaml``);
- :mod:`facepose.train.dataset`: samples from the curated dataset (:class:`CuratedClips`);
- :mod:`facepose.train.step`: the training steps and the loop (:func:`fit`), pure torch.

Ray Train runs the loop through ``tasks/train.py``; ``flows/train.py`` is the Prefect flow around it.
"""

from facepose.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
