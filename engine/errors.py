"""Exceptions the engine raises for bad input. Torch-free, so the server can import them."""


class InvalidRequestError(ValueError):
    """A request (prompt or sampling parameters) is invalid; nothing was changed.

    `param` names the offending parameter, so the HTTP layer can report it.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(FileNotFoundError):
    """The model path does not exist or holds no loadable model."""


class UnsupportedModelError(ValueError):
    """The model exists but its architecture or format is not supported."""
