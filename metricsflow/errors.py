"""The exception hierarchy: one root, every name ends in ``Error``.

Every error carries a ``retriable`` flag (as aiokafka's errors do): ``True`` when the same
operation may succeed if tried again later (a broker that is restarting, a timeout), ``False``
when retrying cannot help (bad input, a corrupt checkpoint, a configuration mistake).
"""

from __future__ import annotations


class MetricsflowError(Exception):
    """Root of every error raised by metricsflow and its gateway."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigurationError(MetricsflowError):
    """A setting has a value that cannot work; the message names the setting and the value."""


class InfrastructureError(MetricsflowError):
    """A local server (Kafka, InfluxDB) could not be installed, started, checked or stopped."""


class SerializationError(MetricsflowError):
    """Bytes could not be encoded or decoded with the expected, versioned format."""


class StateError(MetricsflowError):
    """A state backend operation failed, or restored state does not fit the job."""


class CheckpointError(MetricsflowError):
    """A checkpoint or savepoint could not be taken, persisted, found or restored."""


class ParseError(MetricsflowError):
    """Input could not be parsed; carries the 1-based line and column and the offending text."""

    def __init__(self, message: str, *, line: int, column: int, text: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column
        self.text = text
