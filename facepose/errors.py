"""Error kinds of facepose.

Every error a user can cause is a :class:`FaceposeError` whose one-line message names the input and says
what to do. The CLI prints ``error: <message>`` and exits non-zero; batch jobs record the message in the
row's ``error`` column.
"""

from __future__ import annotations


class FaceposeError(Exception):
    """Base of all errors facepose raises on purpose."""

    #: short name recorded in batch results (``error_kind`` column) and used by the CLI exit code
    kind = "error"
    #: whether retrying the same call may succeed (network blips, throttling)
    transient = False

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class InputError(FaceposeError, ValueError):
    """A bad argument, manifest row, or file layout."""

    kind = "input"


class NoFaceError(InputError):
    """No face was found where one is needed."""

    kind = "no_face"


class MediaError(InputError):
    """A video, audio or image file that cannot be read or written."""

    kind = "media"


class PoseFormatError(InputError):
    """A pose file (Parquet) with a wrong layout, schema or shape."""

    kind = "pose_format"


class StorageError(FaceposeError, OSError):
    """A storage URI that cannot be read or written (missing object, unreachable endpoint, ...)."""

    kind = "storage"

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class ModelNotFoundError(FaceposeError, FileNotFoundError):
    """Model weights that are not where the config says; the message lists what goes where."""

    kind = "model_not_found"


class ConfigError(InputError):
    """A config file or override that does not fit the typed config."""

    kind = "config"
