from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW: _ClassVar[ImageFormat]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_RAW: ImageFormat

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Images(_message.Message):
    __slots__ = ("format", "png", "shape", "data")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    format: ImageFormat
    png: _containers.RepeatedScalarFieldContainer[bytes]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, format: _Optional[_Union[ImageFormat, str]] = ..., png: _Optional[_Iterable[bytes]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DirectionAmount(_message.Message):
    __slots__ = ("direction", "amount")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    direction: str
    amount: float
    def __init__(self, direction: _Optional[str] = ..., amount: _Optional[float] = ...) -> None: ...

class Seeds(_message.Message):
    __slots__ = ("seeds",)
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seeds: _Optional[_Iterable[int]] = ...) -> None: ...

class Amounts(_message.Message):
    __slots__ = ("directions", "amounts")
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    directions: _containers.RepeatedScalarFieldContainer[str]
    amounts: Tensor
    def __init__(self, directions: _Optional[_Iterable[str]] = ..., amounts: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("model", "editor", "latents", "seeds", "images", "edits", "amounts", "return_images", "image_format", "id", "repository_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EDITOR_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    RETURN_IMAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    editor: str
    latents: Tensor
    seeds: Seeds
    images: Images
    edits: _containers.RepeatedCompositeFieldContainer[DirectionAmount]
    amounts: Amounts
    return_images: bool
    image_format: ImageFormat
    id: str
    repository_version: int
    def __init__(self, model: _Optional[str] = ..., editor: _Optional[str] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seeds: _Optional[_Union[Seeds, _Mapping]] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., edits: _Optional[_Iterable[_Union[DirectionAmount, _Mapping]]] = ..., amounts: _Optional[_Union[Amounts, _Mapping]] = ..., return_images: _Optional[bool] = ..., image_format: _Optional[_Union[ImageFormat, str]] = ..., id: _Optional[str] = ..., repository_version: _Optional[int] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("latents", "images", "model", "model_version", "id", "repository_version")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    images: Images
    model: str
    model_version: str
    id: str
    repository_version: int
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., repository_version: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_pushback_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_PUSHBACK_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_pushback_ms: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_pushback_ms: _Optional[int] = ...) -> None: ...

class EditStreamResponse(_message.Message):
    __slots__ = ("id", "result", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    result: EditResponse
    error: Error
    def __init__(self, id: _Optional[str] = ..., result: _Optional[_Union[EditResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class TraverseRequest(_message.Message):
    __slots__ = ("model", "editor", "latent", "seed", "direction", "start", "stop", "steps", "image_format", "repository_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EDITOR_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    editor: str
    latent: Tensor
    seed: int
    direction: str
    start: float
    stop: float
    steps: int
    image_format: ImageFormat
    repository_version: int
    def __init__(self, model: _Optional[str] = ..., editor: _Optional[str] = ..., latent: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., direction: _Optional[str] = ..., start: _Optional[float] = ..., stop: _Optional[float] = ..., steps: _Optional[int] = ..., image_format: _Optional[_Union[ImageFormat, str]] = ..., repository_version: _Optional[int] = ...) -> None: ...

class TraverseFrame(_message.Message):
    __slots__ = ("index", "amount", "latent", "image", "model_version", "repository_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: int
    amount: float
    latent: Tensor
    image: Images
    model_version: str
    repository_version: int
    def __init__(self, index: _Optional[int] = ..., amount: _Optional[float] = ..., latent: _Optional[_Union[Tensor, _Mapping]] = ..., image: _Optional[_Union[Images, _Mapping]] = ..., model_version: _Optional[str] = ..., repository_version: _Optional[int] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "images", "repository_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: Images
    repository_version: int
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., repository_version: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("latents", "model", "model_version", "repository_version")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    model: str
    model_version: str
    repository_version: int
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., repository_version: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "latents", "seeds", "image_format", "repository_version", "sampling_seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    latents: Tensor
    seeds: Seeds
    image_format: ImageFormat
    repository_version: int
    sampling_seed: int
    def __init__(self, model: _Optional[str] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seeds: _Optional[_Union[Seeds, _Mapping]] = ..., image_format: _Optional[_Union[ImageFormat, str]] = ..., repository_version: _Optional[int] = ..., sampling_seed: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "model", "model_version", "repository_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Images
    model: str
    model_version: str
    repository_version: int
    def __init__(self, images: _Optional[_Union[Images, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., repository_version: _Optional[int] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("model", "to", "latents", "seeds", "images", "return_images", "image_format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RETURN_IMAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    to: str
    latents: Tensor
    seeds: Seeds
    images: Images
    return_images: bool
    image_format: ImageFormat
    def __init__(self, model: _Optional[str] = ..., to: _Optional[str] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seeds: _Optional[_Union[Seeds, _Mapping]] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., return_images: _Optional[bool] = ..., image_format: _Optional[_Union[ImageFormat, str]] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("latents", "model", "model_version", "target", "images")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    model: str
    model_version: str
    target: str
    images: Images
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., target: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "repository_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    repository_version: int
    def __init__(self, name: _Optional[str] = ..., repository_version: _Optional[int] = ...) -> None: ...

class Direction(_message.Message):
    __slots__ = ("name", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class EditorInfo(_message.Message):
    __slots__ = ("name", "kind", "directions", "commutative")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    COMMUTATIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    directions: _containers.RepeatedCompositeFieldContainer[Direction]
    commutative: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., directions: _Optional[_Iterable[_Union[Direction, _Mapping]]] = ..., commutative: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "latent_dim", "image_shape", "editors", "default_editor", "engine", "max_items_per_request", "can_encode", "family", "digest", "fallbacks", "routes", "repository_version", "alignments")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    EDITORS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_EDITOR_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CAN_ENCODE_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    latent_dim: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    editors: _containers.RepeatedCompositeFieldContainer[EditorInfo]
    default_editor: str
    engine: str
    max_items_per_request: int
    can_encode: bool
    family: str
    digest: str
    fallbacks: _containers.RepeatedCompositeFieldContainer[EngineFallback]
    routes: _containers.RepeatedCompositeFieldContainer[EngineRoute]
    repository_version: int
    alignments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., latent_dim: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., editors: _Optional[_Iterable[_Union[EditorInfo, _Mapping]]] = ..., default_editor: _Optional[str] = ..., engine: _Optional[str] = ..., max_items_per_request: _Optional[int] = ..., can_encode: _Optional[bool] = ..., family: _Optional[str] = ..., digest: _Optional[str] = ..., fallbacks: _Optional[_Iterable[_Union[EngineFallback, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[EngineRoute, _Mapping]]] = ..., repository_version: _Optional[int] = ..., alignments: _Optional[_Iterable[str]] = ...) -> None: ...

class EngineFallback(_message.Message):
    __slots__ = ("part", "reason")
    PART_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    part: str
    reason: str
    def __init__(self, part: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EngineRoute(_message.Message):
    __slots__ = ("operation", "bucket", "backend", "seconds")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    bucket: int
    backend: str
    seconds: float
    def __init__(self, operation: _Optional[str] = ..., bucket: _Optional[int] = ..., backend: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
