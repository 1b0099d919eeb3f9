"""The one error type for bad user input: reported as a single line, before any work starts."""


class ConfigError(ValueError):
    """Bad user input. The message names the config key and the allowed values, on one line."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
