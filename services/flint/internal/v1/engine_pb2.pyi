from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContextFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "has_seed", "seed", "max_tokens", "stop", "max_time_ms")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    HAS_SEED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    has_seed: bool
    seed: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    max_time_ms: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., has_seed: _Optional[bool] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., max_time_ms: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "kind", "prefix", "suffix", "code", "instruction", "path", "context", "sampling", "bulk", "cache_namespace", "arrival_unix_s", "document", "context_documents")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMPLETE: _ClassVar[GenerateRequest.Kind]
        EDIT: _ClassVar[GenerateRequest.Kind]
    COMPLETE: GenerateRequest.Kind
    EDIT: GenerateRequest.Kind
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    CACHE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kind: GenerateRequest.Kind
    prefix: str
    suffix: str
    code: str
    instruction: str
    path: str
    context: _containers.RepeatedCompositeFieldContainer[ContextFile]
    sampling: SamplingParams
    bulk: bool
    cache_namespace: str
    arrival_unix_s: float
    document: DocumentInput
    context_documents: _containers.RepeatedCompositeFieldContainer[DocumentInput]
    def __init__(self, request_id: _Optional[str] = ..., kind: _Optional[_Union[GenerateRequest.Kind, str]] = ..., prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., code: _Optional[str] = ..., instruction: _Optional[str] = ..., path: _Optional[str] = ..., context: _Optional[_Iterable[_Union[ContextFile, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., bulk: _Optional[bool] = ..., cache_namespace: _Optional[str] = ..., arrival_unix_s: _Optional[float] = ..., document: _Optional[_Union[DocumentInput, _Mapping]] = ..., context_documents: _Optional[_Iterable[_Union[DocumentInput, _Mapping]]] = ...) -> None: ...

class DocumentInput(_message.Message):
    __slots__ = ("key", "version", "base_version", "edits", "cursor", "path")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    base_version: int
    edits: _containers.RepeatedCompositeFieldContainer[DocumentEdit]
    cursor: int
    path: str
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., base_version: _Optional[int] = ..., edits: _Optional[_Iterable[_Union[DocumentEdit, _Mapping]]] = ..., cursor: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class DocumentEdit(_message.Message):
    __slots__ = ("start", "end", "text")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    text: str
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("prompt_tokens",)
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("text", "token_count")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("finish_reason", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "queue_ms", "prefill_ms", "first_token_ms", "decode_ms", "total_ms", "draft_tokens", "accepted_draft_tokens", "withheld_tokens")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    queue_ms: float
    prefill_ms: float
    first_token_ms: float
    decode_ms: float
    total_ms: float
    draft_tokens: int
    accepted_draft_tokens: int
    withheld_tokens: int
    def __init__(self, finish_reason: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., queue_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., draft_tokens: _Optional[int] = ..., accepted_draft_tokens: _Optional[int] = ..., withheld_tokens: _Optional[int] = ...) -> None: ...

class Deltas(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Delta]
    def __init__(self, items: _Optional[_Iterable[_Union[Delta, _Mapping]]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("started", "delta", "final", "deltas")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    started: Started
    delta: Delta
    final: Final
    deltas: Deltas
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., deltas: _Optional[_Union[Deltas, _Mapping]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("replica_id", "model", "running", "waiting", "kv_used_fraction", "max_context_tokens", "healthy", "draining")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_USED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    model: str
    running: int
    waiting: int
    kv_used_fraction: float
    max_context_tokens: int
    healthy: bool
    draining: bool
    def __init__(self, replica_id: _Optional[str] = ..., model: _Optional[str] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_used_fraction: _Optional[float] = ..., max_context_tokens: _Optional[int] = ..., healthy: _Optional[bool] = ..., draining: _Optional[bool] = ...) -> None: ...
