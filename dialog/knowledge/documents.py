"""Files as the knowledge base reads them: Markdown, HTML, plain text and PDF, each into its title
and its sections (the heading path above some text), by the parser made for the format
(markdown-it-py, Beautiful Soup, pypdf), so that code blocks, scripts and page furniture are not
taken for headings or content."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": "text", ".text": "text", ".pdf": "pdf"}
MAX_FILE_BYTES = 20 * 1024 * 1024


class DocumentError(ValueError):
    """A file the knowledge base cannot read (its format, size or content); the message says which."""


@dataclass(frozen=True)
class Section:
    headings: tuple[str, ...]  # the heading path, outermost first
    text: str  # paragraphs, separated by blank lines


@dataclass(frozen=True)
class Document:
    source: str  # the name it was added under (its path as given)
    title: str
    format: str
    sections: tuple[Section, ...]


def read(path: Path, source: str | None = None) -> Document:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DocumentError(f"{path.name}: not a format the knowledge base reads ({', '.join(sorted(FORMATS))})")
    data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise DocumentError(f"{path.name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
    source = source or path.name
    if kind == "pdf":
        title, sections = _pdf(path)
    else:
        text = data.decode("utf-8", errors="replace")
        title, sections = {"markdown": _markdown, "html": _html, "text": _text}[kind](text)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise DocumentError(f"{path.name}: no text found")
    return Document(source, title or _title_from(path), kind, tuple(sections))


class _Sections:
    """Text blocks gathered under the current heading path."""

    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.blocks: list[str] = []
        self.out: list[Section] = []
        self.first_title = ""

    def heading(self, level: int, text: str) -> None:
        text = _one_line(text)
        if not text:
            return
        self.flush()
        self.first_title = self.first_title or (text if level == 1 else "")
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, text))

    def block(self, text: str) -> None:
        text = text.strip()
        if text:
            self.blocks.append(text)

    def flush(self) -> None:
        if self.blocks:
            self.out.append(Section(tuple(t for _, t in self.path), "\n\n".join(self.blocks)))
            self.blocks = []

    def done(self) -> tuple[str, list[Section]]:
        self.flush()
        return self.first_title, self.out


def _markdown(text: str) -> tuple[str, list[Section]]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark", {"html": False}).enable("table").parse(text)
    sections = _Sections()
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            sections.heading(int(tok.tag[1]), tokens[i + 1].content)
        elif tok.type == "inline" and i and tokens[i - 1].type != "heading_open":
            sections.block(_strip_inline(tok.content))
        elif tok.type in ("fence", "code_block"):
            sections.block(tok.content)
    return sections.done()


def _strip_inline(text: str) -> str:
    """Markdown's inline marks off (links keep their text), so the index and the model see words."""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"(\*\*|__|\*|_|`)(.+?)\1", r"\2", text)


BLOCKS = ("p", "li", "dd", "dt", "td", "th", "pre", "blockquote", "figcaption", "caption")
SKIP = ("script", "style", "noscript", "template", "nav", "footer", "header", "aside", "form", "svg")


def _html(text: str) -> tuple[str, list[Section]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    page_title = _one_line(soup.title.get_text()) if soup.title else ""
    for tag in soup(SKIP):
        tag.decompose()
    body = soup.find("main") or soup.find("article") or soup.body or soup
    sections = _Sections()
    for node in body.find_all([*BLOCKS, "h1", "h2", "h3", "h4", "h5", "h6"]):
        if node.find_parent(BLOCKS):  # a list inside a list item, a paragraph in a cell: read once, with its parent
            continue
        if node.name[0] == "h" and node.name[1:].isdigit():
            sections.heading(int(node.name[1]), node.get_text(" "))
        else:
            sections.block(_one_line(node.get_text(" ")) if node.name != "pre" else node.get_text())
    first, out = sections.done()
    return page_title or first, out


def _text(text: str) -> tuple[str, list[Section]]:
    sections = _Sections()
    for block in re.split(r"\n\s*\n", text):
        sections.block(_one_line(block))
    return sections.done()


def _pdf(path: Path) -> tuple[str, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        title = _one_line(str(reader.metadata.title)) if reader.metadata and reader.metadata.title else ""
        sections = _Sections()
        for number, page in enumerate(reader.pages, 1):
            sections.heading(1, f"Page {number}")
            for block in re.split(r"\n\s*\n", page.extract_text() or ""):
                sections.block(_one_line(block))
        _, out = sections.done()
    except (PdfReadError, ValueError, KeyError) as exc:
        raise DocumentError(f"{path.name}: not a readable PDF ({exc})") from None
    return title, out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _title_from(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or path.name
