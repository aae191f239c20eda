from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_BULK: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]

class PositionEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSITION_ENCODING_UNSPECIFIED: _ClassVar[PositionEncoding]
    POSITION_ENCODING_UTF8: _ClassVar[PositionEncoding]
    POSITION_ENCODING_UTF16: _ClassVar[PositionEncoding]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_INTERRUPTED: _ClassVar[FinishReason]
    FINISH_REASON_TIME_LIMIT: _ClassVar[FinishReason]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_BULK: Priority
PRIORITY_INTERACTIVE: Priority
POSITION_ENCODING_UNSPECIFIED: PositionEncoding
POSITION_ENCODING_UTF8: PositionEncoding
POSITION_ENCODING_UTF16: PositionEncoding
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_INTERRUPTED: FinishReason
FINISH_REASON_TIME_LIMIT: FinishReason

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "max_tokens", "stop", "max_time_ms")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    max_time_ms: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., max_time_ms: _Optional[int] = ...) -> None: ...

class ContextFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("request_id", "prefix", "suffix", "context", "path", "sampling", "model", "priority", "document", "context_documents")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prefix: str
    suffix: str
    context: _containers.RepeatedCompositeFieldContainer[ContextFile]
    path: str
    sampling: Sampling
    model: str
    priority: Priority
    document: DocumentCursor
    context_documents: _containers.RepeatedCompositeFieldContainer[DocumentRef]
    def __init__(self, request_id: _Optional[str] = ..., prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., context: _Optional[_Iterable[_Union[ContextFile, _Mapping]]] = ..., path: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., model: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., document: _Optional[_Union[DocumentCursor, _Mapping]] = ..., context_documents: _Optional[_Iterable[_Union[DocumentRef, _Mapping]]] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("request_id", "code", "instruction", "prefix", "suffix", "path", "context", "sampling", "model", "priority")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    code: str
    instruction: str
    prefix: str
    suffix: str
    path: str
    context: _containers.RepeatedCompositeFieldContainer[ContextFile]
    sampling: Sampling
    model: str
    priority: Priority
    def __init__(self, request_id: _Optional[str] = ..., code: _Optional[str] = ..., instruction: _Optional[str] = ..., prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., path: _Optional[str] = ..., context: _Optional[_Iterable[_Union[ContextFile, _Mapping]]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., model: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("open", "complete", "edit", "interrupt", "redirect", "resume", "open_document", "edit_document")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    EDIT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    OPEN_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    EDIT_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    open: Open
    complete: CompleteRequest
    edit: EditRequest
    interrupt: InterruptRequest
    redirect: Redirect
    resume: ResumeRequest
    open_document: OpenDocument
    edit_document: EditDocument
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., complete: _Optional[_Union[CompleteRequest, _Mapping]] = ..., edit: _Optional[_Union[EditRequest, _Mapping]] = ..., interrupt: _Optional[_Union[InterruptRequest, _Mapping]] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ..., resume: _Optional[_Union[ResumeRequest, _Mapping]] = ..., open_document: _Optional[_Union[OpenDocument, _Mapping]] = ..., edit_document: _Optional[_Union[EditDocument, _Mapping]] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("line", "character")
    LINE_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    line: int
    character: int
    def __init__(self, line: _Optional[int] = ..., character: _Optional[int] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: Position
    end: Position
    def __init__(self, start: _Optional[_Union[Position, _Mapping]] = ..., end: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class OpenDocument(_message.Message):
    __slots__ = ("document_id", "path", "text", "version", "position_encoding")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_ENCODING_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    path: str
    text: str
    version: int
    position_encoding: PositionEncoding
    def __init__(self, document_id: _Optional[str] = ..., path: _Optional[str] = ..., text: _Optional[str] = ..., version: _Optional[int] = ..., position_encoding: _Optional[_Union[PositionEncoding, str]] = ...) -> None: ...

class TextEdit(_message.Message):
    __slots__ = ("range", "text")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    range: Range
    text: str
    def __init__(self, range: _Optional[_Union[Range, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class EditDocument(_message.Message):
    __slots__ = ("document_id", "version", "edits")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    version: int
    edits: _containers.RepeatedCompositeFieldContainer[TextEdit]
    def __init__(self, document_id: _Optional[str] = ..., version: _Optional[int] = ..., edits: _Optional[_Iterable[_Union[TextEdit, _Mapping]]] = ...) -> None: ...

class DocumentCursor(_message.Message):
    __slots__ = ("document_id", "version", "cursor")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    version: int
    cursor: Position
    def __init__(self, document_id: _Optional[str] = ..., version: _Optional[int] = ..., cursor: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class DocumentRef(_message.Message):
    __slots__ = ("document_id",)
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    def __init__(self, document_id: _Optional[str] = ...) -> None: ...

class DocumentVersion(_message.Message):
    __slots__ = ("document_id", "version")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    version: int
    def __init__(self, document_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("session_id", "model", "client")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    client: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., client: _Optional[str] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("interrupt_request_id", "complete", "edit")
    INTERRUPT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    EDIT_FIELD_NUMBER: _ClassVar[int]
    interrupt_request_id: str
    complete: CompleteRequest
    edit: EditRequest
    def __init__(self, interrupt_request_id: _Optional[str] = ..., complete: _Optional[_Union[CompleteRequest, _Mapping]] = ..., edit: _Optional[_Union[EditRequest, _Mapping]] = ...) -> None: ...

class InterruptRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class InterruptResponse(_message.Message):
    __slots__ = ("request_id", "was_running", "last_seq")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    was_running: bool
    last_seq: int
    def __init__(self, request_id: _Optional[str] = ..., was_running: _Optional[bool] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("request_id", "last_seq")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    last_seq: int
    def __init__(self, request_id: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("opened", "accepted", "delta", "final", "error", "interrupted", "document")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    accepted: Accepted
    delta: Delta
    final: Final
    error: RequestError
    interrupted: InterruptResponse
    document: DocumentVersion
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ..., interrupted: _Optional[_Union[InterruptResponse, _Mapping]] = ..., document: _Optional[_Union[DocumentVersion, _Mapping]] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("session_id", "model", "max_context_tokens", "worker_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    max_context_tokens: int
    worker_id: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., max_context_tokens: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("request_id", "prompt_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("request_id", "seq", "text", "token_count")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    text: str
    token_count: int
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., text: _Optional[str] = ..., token_count: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "prefill_ms", "first_token_ms", "decode_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    prefill_ms: float
    first_token_ms: float
    decode_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("request_id", "seq", "finish_reason", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "timings", "draft_tokens", "accepted_draft_tokens", "replica_id", "withheld_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    timings: Timings
    draft_tokens: int
    accepted_draft_tokens: int
    replica_id: str
    withheld_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., draft_tokens: _Optional[int] = ..., accepted_draft_tokens: _Optional[int] = ..., replica_id: _Optional[str] = ..., withheld_tokens: _Optional[int] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("request_id", "code", "message", "retryable", "retry_after_ms", "document_version", "document_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    code: int
    message: str
    retryable: bool
    retry_after_ms: int
    document_version: int
    document_id: str
    def __init__(self, request_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ..., document_version: _Optional[int] = ..., document_id: _Optional[str] = ...) -> None: ...
