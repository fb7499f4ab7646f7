"""Gradio input components whose values reach the handlers unchanged, so that the handlers check every value
(with :mod:`ddpm_app.checks`) and answer any wrong one, of any JSON type, with a message naming the field; and the
one place where what a user got wrong becomes the message they see (:func:`user_errors`, :func:`user_error`).

Gradio's own ``Slider``, ``Number``, ``Radio`` and ``Dropdown`` check and round values before a handler sees them:
a string or NaN then fails inside Gradio with a generic error, and a seed of 1.5 is silently rounded to 2. The
versions here are templates of those components (the browser shows the ordinary widgets) that skip that step.

:class:`PhotoInput` is ``gr.Image`` for user photos: it accepts an uploaded file or a ``data:`` URL, under the
same limits (:mod:`ddpm_app.image`), refuses web addresses, paths outside Gradio's upload folder and anything else
with a message, and hands the handler a file path. What these components refuse, before any handler runs, reaches
the user in their language too (:class:`Refused`, :meth:`Blocks.preprocess_data`).
"""

from __future__ import annotations

import html
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
from gradio import processing_utils, utils
from gradio.components.image_editor import EditorData
from gradio.data_classes import GradioModel, ImageData
from gradio.i18n import I18nData
from gradio_client.utils import is_file_obj_with_meta, is_http_url_like
from pydantic import ConfigDict, ValidationError, field_serializer, model_validator
from pydantic.json_schema import SkipJsonSchema

from ddpm_app.checks import InvalidValue, shown
from ddpm_app.image import ImageError, read_data_url
from ddpm_app.text import ENGLISH, CatalogueError, text
from ddpm_app.ui.i18n import I18N, english
from ddpm_app.views.state import UserState


def user_error(message: str) -> gr.Error:
    """The error a user sees: ``message`` with its HTML escaped (the page shows error text as HTML, and messages
    quote what was sent), no traceback in the server's log."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


@contextmanager
def user_errors(language: str = ENGLISH, then: str | None = None):
    """Turn what a user can get wrong (a value out of range, a bad image, a bad model: a :class:`CatalogueError`, such
    as :class:`~ddpm_app.checks.InvalidValue`) into a gr.Error message in ``language``, the catalogue text ``then``
    added (what happens next)."""
    try:
        yield
    except CatalogueError as e:
        raise user_error(e.in_language(language) + (text(then, language) if then else "")) from None


class Refused(gr.Error):
    """A value a component refuses before any handler runs (in its ``preprocess``, or as Gradio first handles a
    file): the catalogue text ``reason``, in English as API clients read it, and in the user's language where the
    call carries the user (:meth:`Blocks.preprocess_data`)."""

    def __init__(self, reason: CatalogueError):
        super().__init__(html.escape(str(reason), quote=False), print_exception=False)
        self.reason = reason


def refused(key: str, **values: object) -> Refused:
    """A :class:`Refused` of the catalogue text ``key`` filled with ``values``."""
    return Refused(InvalidValue(key, **values))


def as_sent(self, payload: Any) -> Any:
    """The value as the client sent it: the handler checks it."""
    return payload


# templates of Gradio's components (the same widgets in the browser) whose values reach the handler unchanged
class Slider(gr.Slider): is_template, preprocess = True, as_sent  # noqa: E701
class Number(gr.Number): is_template, preprocess = True, as_sent  # noqa: E701
class Radio(gr.Radio): is_template, preprocess = True, as_sent  # noqa: E701
class Dropdown(gr.Dropdown): is_template, preprocess = True, as_sent  # noqa: E701
class Textbox(gr.Textbox): is_template, preprocess = True, as_sent  # noqa: E701


def uploaded_file(path: str, upload_folder: str) -> str | None:
    """``path`` if it names a file inside ``upload_folder`` (where Gradio keeps uploads, cached examples and the
    photos decoded from data: URLs) once ``..`` and links are resolved, else None: missing, a folder, outside,
    or no path at all (too long, a NUL byte) all look the same to the caller."""
    try:
        real = Path(path).resolve()
        inside = real.is_relative_to(Path(upload_folder).resolve()) and real.is_file()
    except (OSError, RuntimeError, ValueError):  # a name too long, a link loop, a NUL byte
        return None
    return os.fspath(real) if inside else None


class PhotoData(ImageData):
    """``ImageData`` that takes any JSON: a bare string counts as a URL, and a value that is no file object at
    all becomes an empty one marked ``refused``, so the component can answer it with a message (Gradio would
    fail on it with a generic error before the component is asked)."""

    model_config = ConfigDict(title="ImageData")  # the same API description as gr.Image's

    @model_validator(mode="wrap")
    @classmethod
    def _anything(cls, value: Any, handler):
        try:
            return handler({"url": value} if isinstance(value, str) else value)
        except ValidationError:
            return handler({"meta": {"_type": "gradio.FileData", "refused": shown(value)}})

    @field_serializer("url")
    def _data_url_header(self, url: str | None) -> str | None:
        """A ``data:`` URL serialized as its header alone. Gradio records each input's serialized value in the
        session's state and keeps it an hour after the user leaves: megabytes of every photo sent (refused ones
        too) stayed in memory that long. The handler gets the whole URL: Gradio passes it the model itself."""
        return url[:url.find(",") + 1] + "…" if url is not None and url.startswith("data:") else url


class PhotoInput(gr.Image):
    """``gr.Image`` for photos users send, as a file path (``type="filepath"``). An upload has already passed the
    server's upload limit; a ``data:`` URL is held to the same limit before it is decoded and saved in the cache;
    either way the handler opens the file with :func:`ddpm_app.image.open_image`, so every way a photo arrives
    gets the same checks and messages. Web addresses and other values are refused.

    Gradio checks a file object's path only when the object carries its ``meta`` tag; an untagged
    ``{"path": …}`` reaches :meth:`preprocess` as sent. So every path is checked here: only files inside Gradio's
    upload folder are read, and any other path gets the same message whether it exists, is a folder or is
    missing."""

    is_template = True
    data_model = PhotoData

    def preprocess(self, payload: PhotoData | None) -> str | None:
        if payload is None:
            return None
        if payload.meta.get("refused") is not None:
            raise refused("upload.photo_form", got=payload.meta["refused"])
        if payload.path and not is_http_url_like(payload.path):
            return self.upload(payload.path)
        if payload.url and payload.url.startswith("data:"):
            try:
                data = read_data_url(payload.url)
            except ImageError as e:
                raise Refused(e) from None
            path = processing_utils.save_bytes_to_cache(data, "photo", self.GRADIO_CACHE)
            self.temp_files.add(path)
            return path
        if is_http_url_like(payload.path) or is_http_url_like(payload.url):
            raise refused("upload.photo_not_fetched")
        raise refused("upload.photo_form", got=shown(payload.url) if payload.url else InvalidValue("upload.no_file"))

    @staticmethod
    def upload(path: str) -> str:
        """The real path of ``path`` if it is a file Gradio made (see :func:`uploaded_file`), else an error that
        says nothing about the file system: the same words for every path that is not an upload."""
        if (real := uploaded_file(path, utils.get_upload_folder())) is None:
            raise refused("upload.photo_not_read")
        return real

    def check_sent(self, value: Any) -> None:
        """The same check for a file object carrying Gradio's ``meta`` tag, before Gradio's own (which answers a
        path outside its upload folder with an error that has no message)."""
        if is_file_obj_with_meta(value) and isinstance(value.get("path"), str) and not is_http_url_like(value["path"]):
            self.upload(value["path"])

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | None) -> str | None:
        """Gradio would download a web address here, before :meth:`preprocess`, without the upload limits."""
        if is_http_url_like(url_or_file_path):
            raise refused("upload.photo_not_fetched")
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class SentFileData(GradioModel):
    """``FileData``'s fields, taking any JSON: a value that is no file object becomes an empty one marked
    ``refused``, so the component can answer it with a message naming its field (``FileData`` itself fails on it
    with no message, before the component is asked)."""

    model_config = ConfigDict(title="FileData", json_schema_extra={"description": "A local filepath or publicly "
                                                                   "available URL."})  # FileData's API description
    path: str = ""
    url: str | None = None
    size: int | None = None
    orig_name: str | None = None
    mime_type: str | None = None
    is_stream: bool = False
    meta: dict = {"_type": "gradio.FileData"}
    refused: SkipJsonSchema[str | None] = None

    @model_validator(mode="wrap")
    @classmethod
    def _anything(cls, value: Any, handler):
        if isinstance(value, dict) and isinstance(value.get("path"), str) and "refused" not in value:
            try:
                return handler(value)
            except ValidationError:
                pass
        return handler({"refused": shown(value)})


class FileInput(gr.File):
    """``gr.File`` for one uploaded file, as a path: anything else, of any JSON type, is refused with a message
    starting with :attr:`field`; like :class:`PhotoInput`, only files inside Gradio's upload folder are read and
    web addresses are not fetched."""

    is_template = True
    # gr.File sets its data model in __init__: this one stays
    data_model = property(lambda self: SentFileData, lambda self, value: None)
    field = "file"

    def get_block_name(self) -> str:
        """The browser's File widget, for subclasses too (Gradio names a template by its direct base class)."""
        return "file"

    get_block_class = get_block_name

    def _refused(self, sent: str | CatalogueError) -> Refused:
        return refused("upload.file_form", name=self.field, got=sent)

    def preprocess(self, payload: SentFileData | None) -> str | None:
        if payload is None:
            return None
        if payload.refused is not None:
            raise self._refused(payload.refused)
        if not payload.path or is_http_url_like(payload.path):
            raise self._refused(shown(payload.path or payload.url))
        self.upload(payload.path)
        return super().preprocess(payload)

    def upload(self, path: str) -> str:
        real = uploaded_file(path, utils.get_upload_folder())
        if real is None:
            raise refused("upload.file_not_read", name=self.field)
        return real

    def check_sent(self, value: Any) -> None:
        if is_file_obj_with_meta(value) and isinstance(value.get("path"), str) and not is_http_url_like(value["path"]):
            self.upload(value["path"])

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | None) -> str | None:
        if is_http_url_like(url_or_file_path):
            raise self._refused(InvalidValue("upload.web_address"))
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class SketchData(EditorData):
    """``EditorData`` that takes any JSON: a value that is no editor value (not an object, or an object with none
    of its keys) becomes an empty one marked ``refused``, so the sketchpad can answer it with a message."""

    model_config = ConfigDict(title="EditorData")
    refused: SkipJsonSchema[str | None] = None

    @model_validator(mode="wrap")
    @classmethod
    def _anything(cls, value: Any, handler):
        if isinstance(value, dict) and value.keys() & {"background", "layers", "composite", "id"}:
            try:
                return handler({k: v for k, v in value.items() if k != "refused"})
            except ValidationError:
                pass
        return handler({"refused": shown(value)})


class SketchInput(gr.ImageEditor):
    """A sketchpad (``gr.ImageEditor`` with a black brush and no uploads, which is what ``gr.Sketchpad`` sets up; a
    template of a template would have no page component) that answers any value that is no drawing with a
    message, reads only images inside Gradio's upload folder and refuses web addresses, which Gradio would
    download before the handler is asked."""

    is_template = True
    data_model = SketchData

    def preprocess(self, payload: SketchData | None):
        if payload is not None:
            if payload.refused is not None:
                raise refused("upload.drawing_form", got=payload.refused)
            for image in (payload.background, payload.composite, *payload.layers):
                if image is not None and (not image.path or is_http_url_like(image.path)
                                          or uploaded_file(image.path, utils.get_upload_folder()) is None):
                    raise refused("upload.drawing_not_read")
        return super().preprocess(payload)

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | None) -> str | None:
        if is_http_url_like(url_or_file_path):
            raise refused("upload.drawing_not_fetched")
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class CSVInput(FileInput):
    """The lab's CSV upload: its messages start with "CSV file"."""

    is_template = True
    field = "CSV file"


class Blocks(gr.Blocks):
    """``gr.Blocks`` whose endpoints refuse a call with more or fewer values than they have fields, naming the
    fields (Gradio ignores extra values silently), and let :class:`PhotoInput` check the paths of tagged file
    objects before Gradio does. Its page speaks the catalogue's languages (:data:`~ddpm_app.ui.i18n.I18N`) however it
    is launched."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.i18n_instance = I18N  # what the config sends the browser; launch() sets it again

    def launch(self, *args, i18n: gr.I18n | None = None, **kwargs):
        return super().launch(*args, i18n=i18n or I18N, **kwargs)

    def get_api_info(self, all_endpoints: bool = False, page: str | None = None):
        """Gradio's description of the endpoints, with the fields' labels in English (the page shows them in the
        browser's language; an API client reads them as they always were)."""
        return _in_english(super().get_api_info(all_endpoints, page))

    async def preprocess_data(self, block_fn, inputs: list[Any], state, explicit_call: bool = False):
        """Gradio's preprocessing (the endpoint's checks, then each component's), a value refused on the way said
        in the language of the user the call carries (their :class:`~ddpm_app.views.state.UserState`), else in
        English."""
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except Refused as e:
            users = [state[block._id] for block in block_fn.inputs if state is not None and block.stateful]
            language = next((user.language for user in users if isinstance(user, UserState)), ENGLISH)
            raise user_error(e.reason.in_language(language)) from None

    def validate_inputs(self, block_fn, inputs: list[Any]) -> None:
        # By now a call with one value per field has None in the slots of server-side state (gr.State), as
        # gradio_client and the page send them; a value there is one more than the fields.
        fields = [block for block in block_fn.inputs if not block.skip_api]
        sent = len(inputs) - (len(inputs) == len(block_fn.inputs)) * sum(
            value is None for block, value in zip(block_fn.inputs, inputs) if block.skip_api)
        if sent != len(fields):
            names = ", ".join(str(english(getattr(block, "label", None)) or block.get_block_name()) for block in fields)
            raise refused("upload.arity", api=block_fn.api_name or block_fn.name, names=names or "none", sent=sent,
                          values=InvalidValue(f"count.value.{'one' if len(fields) == 1 else 'other'}", n=len(fields)))
        for block, value in zip(block_fn.inputs, inputs):
            if isinstance(block, (PhotoInput, FileInput)):
                block.check_sent(value)


def _in_english(value: Any) -> Any:
    """``value`` (JSON-like) with every translatable label read in English."""
    if isinstance(value, dict):
        if value.get("__type__") == "translation_metadata":
            return english(I18nData(value["key"]))
        return {k: _in_english(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_english(v) for v in value]
    return english(value)
