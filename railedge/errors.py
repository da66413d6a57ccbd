"""Errors a user can meet. Each message names the thing at fault and the fix; the CLI prints
them without a traceback and exits non-zero."""


class RailedgeError(Exception):
    """Base class for errors the CLI reports as one line and exit code 2."""


class ConfigError(RailedgeError):
    """A config file, key or value is wrong."""


class SourceError(RailedgeError):
    """Footage cannot be opened or read."""


class ModelError(RailedgeError):
    """A model artifact is missing, corrupt, truncated or mismatched."""


class DataError(RailedgeError):
    """A training or evaluation data set is missing or malformed."""


class BrokerError(RailedgeError):
    """The MQTT broker refused or cannot be used as configured."""
