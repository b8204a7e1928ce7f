"""Errors a user can act on. The CLI prints their message and exits 2 instead of a traceback."""


class SclviError(Exception):
    """Base for every error whose message tells the user what to do."""


class ConfigError(SclviError):
    """A config file or option is invalid (unknown key, bad value, inconsistent geometry)."""


class DataError(SclviError):
    """A data set or image is missing, empty, unreadable or of the wrong shape."""


class BundleError(SclviError):
    """A model bundle is missing, corrupt, or incompatible with this version."""


class BackendError(SclviError):
    """No usable encoder backend (e.g. torch not installed and no engine built)."""
