"""The server's typed errors, each with its HTTP status and OpenAI `type`/`code`/`param`.

Code anywhere in the server raises an `APIError` subclass (or an engine contract error, which
`to_api_error` maps); the HTTP layer (`server/api/errors.py`) renders any of them as the
envelope `{"error": {message, type, param, code}}`. Nothing here knows about FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping

from server.engine.contract import EngineDeadError, RequestRejectedError
from server.protocol.errors import ErrorDetail, ErrorResponse

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error with its HTTP status and OpenAI `type`/`code`; subclasses fix those."""

    status_code = 500
    error_type = SERVER_ERROR
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def with_param(self, param: str) -> APIError:
        """Attach the request path of the offending value, e.g. `messages[0].content[1]`."""
        self.param = param
        return self

    def envelope(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                message=self.message, type=self.error_type, param=self.param, code=self.code
            )
        )


class InvalidRequest(APIError):
    status_code = 400
    error_type = INVALID_REQUEST
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class InvalidImageURL(InvalidRequest):
    code = "invalid_image_url"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class ImageTooLarge(InvalidRequest):
    code = "image_too_large"


class TooManyImages(InvalidRequest):
    code = "too_many_images"


class TooManyVideos(InvalidRequest):
    code = "too_many_videos"


class TooManySequences(InvalidRequest):
    code = "too_many_sequences"


class InvalidVideoURL(InvalidRequest):
    code = "invalid_video_url"


class InvalidDocument(InvalidRequest):
    code = "invalid_document"


class MediaFetchFailed(InvalidRequest):
    code = "media_fetch_failed"


class MediaHostNotAllowed(InvalidRequest):
    code = "media_host_not_allowed"


class MediaTooLarge(InvalidRequest):
    code = "media_too_large"


class MediaTimeout(InvalidRequest):
    code = "media_timeout"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class RequestHeadersTooLarge(InvalidRequest):
    status_code = 431
    code = "request_headers_too_large"


class InvalidHTTPRequest(InvalidRequest):
    code = "invalid_http_request"


class InvalidAPIKey(APIError):
    status_code = 401
    error_type = INVALID_REQUEST
    code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFound(APIError):
    status_code = 404
    error_type = INVALID_REQUEST
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class ResponseNotFound(APIError):
    """A stored response (`/v1/responses/{id}`, `previous_response_id`) that does not exist."""

    status_code = 404
    error_type = INVALID_REQUEST
    code = "response_not_found"

    def __init__(self, response_id: str, *, param: str | None = None) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param=param)


class FileNotFound(APIError):
    status_code = 404
    error_type = INVALID_REQUEST
    code = "file_not_found"


class RouteNotFound(APIError):
    status_code = 404
    error_type = INVALID_REQUEST
    code = "not_found"


class MethodNotAllowed(APIError):
    status_code = 405
    error_type = INVALID_REQUEST
    code = "method_not_allowed"


class ServerOverloaded(APIError):
    status_code = 503
    code = "server_overloaded"

    def __init__(
        self, message: str = "The server is overloaded; retry later.", *, retry_after_s: int = 1
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineDead(APIError):
    status_code = 503
    code = "engine_dead"


class EngineStarting(APIError):
    """The engine is still loading or warming up; /ready is not 200 yet."""

    status_code = 503
    code = "engine_starting"

    def __init__(
        self, message: str = "The model is still loading; retry shortly.", *, retry_after_s: int = 5
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ServerShuttingDown(APIError):
    """The server is draining after SIGTERM (server/serving/drain.py)."""

    status_code = 503
    code = "server_shutting_down"


class RequestAborted(APIError):
    """The engine dropped the request (e.g. the server is shutting down)."""

    status_code = 503
    code = "request_aborted"


class InternalError(APIError):
    """The generic 500: its message never contains details of the failure."""

    def __init__(self, message: str = "The server had an error processing the request.") -> None:
        super().__init__(message)


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception to the APIError clients see (unknown ones to a generic 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestRejectedError):
        return InvalidRequest(str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, EngineDeadError):
        return EngineDead("The inference engine is not running; retry later.")
    return InternalError()
