"""The documents (PDF `file` parts) of one chat request: options within the server's caps,
page selection, a token budget per page, rendering (server/media/document.py), token count.

The PDF comes as `file_data` (a data: URL or bare base64), `file_url` (fetched like an image
URL) or `file_id` (uploaded with the Files API). A document becomes, in page order, `Page N:` (N = the page's number in the file) followed by an
ordinary image block per page (server/serving/prompt.py); from there a page is an image like
any other. The page images are rendered at `dpi` (default: the highest at which an A4 page fits
the model's per-image budget), then scaled down where needed so that every page fits
`max_tokens / pages`: the documents' token cost is known, exactly, before the engine sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from server.errors import (
    APIError,
    ImageTooLarge,
    InvalidDocument,
    InvalidImageURL,
    InvalidRequest,
    UnsupportedParameter,
)
from server.media import MediaLimits, fetch_media
from server.media.document import POINTS_PER_INCH, PageSize, render_pdf
from server.metrics import DOCUMENT_PAGE_RENDER_SECONDS
from server.model.image_processing import (
    ImageProcessorConfig,
    ImageTooLargeError,
    check_grid,
    num_image_tokens,
    resized_size,
)
from server.protocol.chat import ChatMessage, DocumentOptions, FileInput
from server.serving.files import Files
from server.serving.images import ImageBudget, PreparedImage
from server.settings import Settings

A4_INCHES = (210 / 25.4, 297 / 25.4)
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """A `file` part of the request, in prompt order."""

    message_index: int
    part_index: int
    file: FileInput

    @property
    def key(self) -> tuple[int, int]:
        return (self.message_index, self.part_index)

    @property
    def param(self) -> str:
        return f"messages[{self.message_index}].content[{self.part_index}].file"


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    numbers: list[int]  # 1-based numbers of the pages used, in order
    pages: list[PreparedImage]
    page_count: int  # pages in the file


def document_refs(messages: Sequence[ChatMessage]) -> list[DocumentRef]:
    return [
        DocumentRef(m, p, part.file)
        for m, message in enumerate(messages)
        for p, part in enumerate(message.content)
        if part.type == "file" and part.file is not None
    ]


def a4_dpi(cfg: ImageProcessorConfig, patch_limit: int) -> float:
    """The highest dpi at which an A4 page fits `patch_limit` patches of the model."""
    w, h = A4_INCHES
    return math.sqrt(patch_limit * cfg.patch_size**2 / (w * h))


def parse_pages(spec: str, page_count: int) -> list[int]:
    """`"1-5,8"` -> [1, 2, 3, 4, 5, 8] (document order, each page once), checked against
    the document's page count."""
    chosen: set[int] = set()
    for item in spec.split(","):
        match = _RANGE.match(item)
        if match is None:
            raise InvalidRequest(
                f"document.pages {spec!r} is not a list of pages and ranges like '1-5,8'.",
                param="document.pages",
                code="invalid_value",
            )
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        if first < 1 or last < first:
            raise InvalidRequest(
                f"document.pages: {item.strip()!r} is not a page range (pages count from 1).",
                param="document.pages",
                code="invalid_value",
            )
        if last > page_count:
            raise InvalidRequest(
                f"document.pages asks for page {last}; the document has {page_count}.",
                param="document.pages",
                code="invalid_value",
            )
        chosen.update(range(first, last + 1))
    return sorted(chosen)


@dataclass(frozen=True, slots=True)
class DocumentPolicy:
    """The server's document caps (Settings) and the options of one request within them."""

    max_pages: int
    max_tokens: int
    page_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentPolicy:
        return cls(
            max_pages=settings.max_document_pages,
            max_tokens=settings.max_document_tokens,
            page_timeout_s=settings.document_page_timeout,
        )

    def check(self, requested: DocumentOptions | None) -> DocumentOptions:
        asked = requested or DocumentOptions()
        for name, value, cap, flag in (
            ("max_pages", asked.max_pages, self.max_pages, "--max-document-pages"),
            ("max_tokens", asked.max_tokens, self.max_tokens, "--max-document-tokens"),
        ):
            if value is not None and value > cap:
                raise InvalidRequest(
                    f"document.{name} is {value}; this server allows at most {cap} ({flag}).",
                    param=f"document.{name}",
                    code="invalid_value",
                )
        return asked


def select_pages(page_count: int, options: DocumentOptions, pages_left: int) -> list[int]:
    """Page numbers to read: `pages` (default all), cut to the first `max_pages`. Without an
    explicit `max_pages`, more pages than the server reads is a 400, not a silent cut."""
    numbers = (
        parse_pages(options.pages, page_count) if options.pages else list(range(1, page_count + 1))
    )
    if options.max_pages is not None:
        numbers = numbers[: options.max_pages]
    if len(numbers) > pages_left:
        raise InvalidRequest(
            f"The request's documents have {len(numbers)} pages to read beyond what fits; this "
            f"server reads at most {pages_left} more (--max-document-pages). Choose pages with "
            "document.pages or document.max_pages.",
            param="document.max_pages",
            code="too_many_pages",
        )
    return numbers


def page_scale(size: PageSize, dpi: float, patch_limit: int, patch: int) -> float:
    """Pixels per point: `dpi`, lowered until the page fits `patch_limit` patches."""
    scale = dpi / POINTS_PER_INCH
    width, height = size[0] * scale, size[1] * scale
    patches = width * height / patch**2
    if patches > patch_limit:
        scale *= math.sqrt(patch_limit / patches)
    return scale


def fit_page(image: Image.Image, cfg: ImageProcessorConfig, max_tokens: int) -> PreparedImage:
    """Size a rendered page to at most `max_tokens` tokens (padding included) and count them.
    The size chosen is one the model's processor (`cfg`) leaves as it is, so the count here is
    the engine's."""
    merge = cfg.merge_kernel_size[0] * cfg.merge_kernel_size[1]
    limit = min(cfg.in_token_limit, max_tokens * merge)
    while True:
        width, height = resized_size(image.width, image.height, replace_limit(cfg, limit))
        if width < 1 or height < 1:
            raise ImageTooLarge("A page's aspect ratio is too extreme for the model.")
        tokens = num_image_tokens(width, height, cfg)
        settled = resized_size(width, height, cfg) == (width, height)
        if (tokens <= max_tokens and settled) or limit <= 1:
            break
        limit = max(1, int(limit * 0.9))
    try:
        check_grid(width, height, cfg)
    except ImageTooLargeError as exc:
        raise ImageTooLarge(str(exc)) from exc
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return PreparedImage(image=image, num_tokens=tokens)


def replace_limit(cfg: ImageProcessorConfig, limit: int) -> ImageProcessorConfig:
    return dataclasses.replace(cfg, in_token_limit=limit)


@dataclass(slots=True)
class _PagePlan:
    """Picks one document's pages and their scale once its page sizes are known (called by
    render_pdf between opening the file and rendering); remembers what it chose."""

    options: DocumentOptions
    dpi: float
    tokens: int  # the document's token budget
    pages_left: int  # pages the request may still read
    patch_limit: int  # the server's per-image limit, in patches
    cfg: ImageProcessorConfig
    chosen: list[int] = dataclasses.field(default_factory=list)
    per_page: int = 0  # token budget of each page

    def __call__(self, sizes: list[PageSize]) -> list[tuple[int, float]]:
        self.chosen = select_pages(len(sizes), self.options, self.pages_left)
        merge = self.cfg.merge_kernel_size[0] * self.cfg.merge_kernel_size[1]
        self.per_page = min(self.tokens // len(self.chosen), self.patch_limit // merge)
        if self.per_page < 1:
            raise InvalidRequest(
                f"document.max_tokens leaves less than one token for each of the "
                f"{len(self.chosen)} pages; raise it or read fewer pages.",
                param="document.max_tokens",
                code="invalid_value",
            )
        limit, patch = self.per_page * merge, self.cfg.patch_size
        return [(n - 1, page_scale(sizes[n - 1], self.dpi, limit, patch)) for n in self.chosen]


def _fit_pages(
    images: list[Image.Image], cfg: ImageProcessorConfig, max_tokens: int
) -> list[PreparedImage]:
    return [fit_page(image, cfg, max_tokens) for image in images]


async def prepare_documents(
    refs: Sequence[DocumentRef],
    *,
    requested: DocumentOptions | None,
    policy: DocumentPolicy,
    limits: MediaLimits,
    budget: ImageBudget,
    files: Files | None = None,
) -> dict[tuple[int, int], PreparedDocument]:
    """Fetch and render every document, in prompt order (one at a time: each is CPU-bound
    and runs in its own process). The first failure is raised with `param` naming its part."""
    if not refs:
        return {}
    options = policy.check(requested)
    cfg = budget.model  # the processor's; the server's own limit applies through the plan
    dpi = options.dpi or a4_dpi(cfg, budget.in_token_limit)
    tokens_each = (options.max_tokens or policy.max_tokens) // len(refs)
    out: dict[tuple[int, int], PreparedDocument] = {}
    pages_left = policy.max_pages
    for ref in refs:
        plan = _PagePlan(options, dpi, tokens_each, pages_left, budget.in_token_limit, cfg)
        try:
            data = await _file_bytes(ref.file, limits, files)
            rendered = await render_pdf(data, plan, page_timeout_s=policy.page_timeout_s)
            images = [page.image for page in rendered.pages]
            pages = await asyncio.to_thread(_fit_pages, images, cfg, plan.per_page)
        except APIError as exc:
            if exc.param is None or not exc.param.startswith("document."):
                exc.with_param(ref.param)
            raise
        for page in rendered.pages:
            DOCUMENT_PAGE_RENDER_SECONDS.observe(page.seconds)
        out[ref.key] = PreparedDocument(plan.chosen, pages, rendered.page_count)
        pages_left -= len(plan.chosen)
    return out


async def _file_bytes(file: FileInput, limits: MediaLimits, files: Files | None) -> bytes:
    if file.file_id is not None:
        if files is None:
            raise UnsupportedParameter("'file_id' needs the Files API, which is not enabled.")
        return await files.read(file.file_id, limits.max_bytes)
    url = file.file_url or file.file_data or ""
    if file.file_data is not None and not url.startswith("data:"):
        url = "data:application/pdf;base64," + url
    try:
        return await fetch_media(url, limits=limits)
    except InvalidImageURL as exc:  # the fetcher speaks of images; this is a document
        raise InvalidDocument(exc.message) from None
