"""
The one exception configuration loading raises.
"""


class ConfigError(Exception):
    """
    The configuration is invalid; the message names the key and the file.
    """


__all__ = ["ConfigError"]
