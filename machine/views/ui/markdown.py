"""A small, safe Markdown → HTML renderer for PLAN.md and REPORT.md (every character escaped)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

Link = Callable[[str], str | None]  # a relative target → its URL (None: not served)

_CODE = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+&quot;[^)]*&quot;)?\s*\)")
_LINK = re.compile(r"\[([^\]]+)\]\(\s*<?([^)\s>]+)>?(?:\s+&quot;[^)]*&quot;)?\s*\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EM = re.compile(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_HELD = re.compile("\x00(\\d+)\x00")


def render(text: str, link: Link) -> str:
    """HTML for `text`; raw HTML in the source is shown as text, never interpreted."""
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        i = _block(lines, i, out, link)
    return "\n".join(out)


def _block(lines: list[str], i: int, out: list[str], link: Link) -> int:
    line = lines[i]
    if line.lstrip().startswith("```"):
        return _fence(lines, i, out)
    if not line.strip():
        return i + 1
    if m := _HEADING.match(line):
        level = len(m.group(1))
        out.append(f"<h{level}>{inline(m.group(2), link)}</h{level}>")
        return i + 1
    if _RULE.match(line):
        out.append("<hr>")
        return i + 1
    if "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
        return _table(lines, i, out, link)
    if _BULLET.match(line) or _NUMBERED.match(line):
        return _list(lines, i, out, link)
    if line.lstrip().startswith(">"):
        return _quote(lines, i, out, link)
    return _paragraph(lines, i, out, link)


def _fence(lines: list[str], i: int, out: list[str]) -> int:
    lang = lines[i].strip()[3:].strip()
    body: list[str] = []
    i += 1
    while i < len(lines) and not lines[i].lstrip().startswith("```"):
        body.append(lines[i])
        i += 1
    cls = f' class="lang-{html.escape(lang, quote=True)}"' if lang else ""
    out.append(f"<pre><code{cls}>{html.escape(chr(10).join(body))}</code></pre>")
    return i + 1


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") else line
    return [c.strip() for c in line.split("|")]


def _table(lines: list[str], i: int, out: list[str], link: Link) -> int:
    head = "".join(f"<th>{inline(c, link)}</th>" for c in _cells(lines[i]))
    rows: list[str] = []
    i += 2
    while i < len(lines) and "|" in lines[i] and lines[i].strip():
        rows.append("<tr>" + "".join(f"<td>{inline(c, link)}</td>"
                                     for c in _cells(lines[i])) + "</tr>")
        i += 1
    out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return i


def _list(lines: list[str], i: int, out: list[str], link: Link) -> int:
    ordered = bool(_NUMBERED.match(lines[i]))
    pattern = _NUMBERED if ordered else _BULLET
    items: list[str] = []
    while i < len(lines) and lines[i].strip():
        m = pattern.match(lines[i])
        if m:
            items.append(m.group(1))
        elif items and lines[i].startswith((" ", "\t")):
            items[-1] += " " + lines[i].strip()  # a continuation line
        else:
            break
        i += 1
    tag = "ol" if ordered else "ul"
    out.append(f"<{tag}>" + "".join(f"<li>{inline(t, link)}</li>" for t in items) + f"</{tag}>")
    return i


def _quote(lines: list[str], i: int, out: list[str], link: Link) -> int:
    body: list[str] = []
    while i < len(lines) and lines[i].lstrip().startswith(">"):
        body.append(lines[i].lstrip()[1:].lstrip())
        i += 1
    out.append(f"<blockquote>{render(chr(10).join(body), link)}</blockquote>")
    return i


def _paragraph(lines: list[str], i: int, out: list[str], link: Link) -> int:
    body: list[str] = []
    while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
        body.append(lines[i].strip())
        i += 1
    out.append(f"<p>{inline(' '.join(body), link)}</p>")
    return i


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(_HEADING.match(line) or line.lstrip().startswith(("```", ">"))
                or _BULLET.match(line) or _NUMBERED.match(line) or _RULE.match(line))


def inline(text: str, link: Link) -> str:
    """Escape `text`, then apply code spans, images, links, bold and italics."""
    parts = _CODE.split(text.replace("\x00", ""))
    out: list[str] = []
    k = 0
    while k < len(parts):
        if k % 3 == 0:
            out.append(_spans(html.escape(parts[k], quote=True), link))
            k += 1
        else:  # parts[k] is the backtick run, parts[k + 1] the code
            out.append(f"<code>{html.escape(parts[k + 1].strip(), quote=True)}</code>")
            k += 2
    return "".join(out)


def _spans(escaped: str, link: Link) -> str:
    made: list[str] = []  # generated tags wait behind placeholders, out of bold's reach

    def keep(tag: str) -> str:
        made.append(tag)
        return f"\x00{len(made) - 1}\x00"

    escaped = _IMAGE.sub(lambda m: keep(_image(m.group(1), m.group(2), link)), escaped)
    escaped = _LINK.sub(lambda m: keep(_anchor(m.group(1), m.group(2), link)), escaped)
    escaped = _BOLD.sub(r"<strong>\2</strong>", escaped)
    escaped = _EM.sub(r"<em>\2</em>", escaped)
    for _ in range(2):  # a link's label may hold an image
        escaped = _HELD.sub(lambda m: made[int(m.group(1))], escaped)
    return escaped


def _target(escaped_url: str, link: Link) -> str | None:
    url = html.unescape(escaped_url)
    if url.startswith(_SAFE_SCHEMES):
        return url
    if ":" in url.split("/")[0] or url.startswith("//"):
        return None  # javascript:, data:, protocol-relative: never
    return link(url.split("#")[0])


def _image(alt: str, url: str, link: Link) -> str:
    target = _target(url, link)
    if target is None or target.startswith("mailto:"):
        return alt
    return f'<img src="{html.escape(target, quote=True)}" alt="{alt}" loading="lazy">'


def _anchor(label: str, url: str, link: Link) -> str:
    target = _target(url, link)
    if target is None:
        return label
    return (f'<a href="{html.escape(target, quote=True)}" target="_blank" '
            f'rel="noopener noreferrer">{label}</a>')
