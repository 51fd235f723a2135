"""User-facing errors.

Anything a user can cause (a bad path, a corrupt file, a bad flag value, a prompt that
does not fit) raises `Olmo2Error` with a one-line message that names the file or field
and says what to do. The CLI catches it in one place and prints it without a traceback
(unless `--debug`). Programming errors stay ordinary exceptions.
"""


class Olmo2Error(Exception):
    """A failure the user can fix; str(e) is the one-line message shown."""


class CheckpointError(Olmo2Error):
    """A checkpoint directory or file is missing, corrupt, or does not fit the config."""


class ConfigError(Olmo2Error):
    """A config file or value is invalid."""


class DataError(Olmo2Error):
    """Input data is missing or malformed."""


class GenerationError(Olmo2Error, ValueError):
    """Invalid generation request: sampling values, prompt too long, bad stop list."""


class DiskFullError(Olmo2Error, OSError):
    """A write ran out of space (or quota); an OSError too, for callers that catch those."""


class TokenIdError(Olmo2Error, ValueError):
    """Token ids given to the model are not integers, or lie outside its vocabulary or context."""
