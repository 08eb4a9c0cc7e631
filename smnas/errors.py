"""Exceptions that carry a message fit for a user: file, field, what was expected."""


class SmnasError(Exception):
    """Base class: the CLI prints these without a traceback and exits with status 2."""


class DataFormatError(SmnasError, ValueError):
    """An input file does not hold what its format requires.

    The message names the file, the entry (image id, frame name, XML element...) and what was
    expected, e.g. ``instances_val.json: annotation 17: bbox width -3.0 must be > 0 (x2 < x1)``.
    """


class SpecError(SmnasError, ValueError):
    """An architecture spec or encoding is malformed or names an invalid choice."""
