"""Check the built book as a reader would see it; ``make book`` runs this last.

    python book/check_html.py [book/_build/html]

Each rule below finds one kind of fault that Sphinx's ``-W`` build lets through,
and names the page and the problem; the script exits 1 if any page has one.

- a paragraph that is a raw pipe table (Markdown that was not parsed as a table);
- raw LaTeX in the text, outside the containers MathJax typesets;
- a MathJax error marker, or a formula whose braces do not balance;
- a broken cross-reference: role text left unparsed, "??" or "[?]", an unresolved
  reference, a local link to a missing page or anchor, an equation reference printed
  inside a second pair of parentheses ("((4.3))");
- an image without alt text (an alt that is only the file name counts as none);
- a code listing that carries a numpydoc ``Parameters``/``Returns`` section.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bs4 import BeautifulSoup, NavigableString

#: Elements whose text is not prose: MathJax typesets ``.math``; code is code.
NOT_PROSE = {"script", "style", "pre", "code", "textarea", "math", "svg", "kbd", "samp"}
NOT_PROSE_CLASSES = {"math", "highlight", "MathJax", "MathJax_Preview", "mjx-container",
                     "cell_output", "output", "search", "bd-search"}

# a line of pipes, or the |---|---| rule under a table header
PIPE_TABLE = re.compile(r"^\s*\|.*\|\s*$|\|\s*:?-{3,}:?\s*\|", re.M)
LATEX = re.compile(
    r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\end\{"
    r"|\\(?:frac|tfrac|dfrac|sqrt|sum|prod|int|mathbf|mathrm|mathcal|operatorname|bar|hat"
    r"|tilde|left|right|cdot|odot|quad|alpha|Delta|lambda|top|le|ge|in|text)(?![A-Za-z])"
    r"|\$[^$\s][^$\n]*[\\^_{][^$\n]*\$")
UNPARSED_ROLE = re.compile(r"\{(?:eq|ref|numref|cite(?::[pt])?|doc|term|download)\}`?")
MATHJAX_ERROR = ("merror", "MathJax_Error", "mjx-merror")
NUMPYDOC = re.compile(r"^\s*(Parameters|Returns|Yields|Raises)\s*\n\s*-{3,}\s*$", re.M)


def _classes(tag):
    return set(tag.get("class") or ())


def _in_prose(node):
    """True if a text node is outside math, code and notebook output."""
    for parent in node.parents:
        if parent.name in NOT_PROSE or _classes(parent) & NOT_PROSE_CLASSES:
            return False
    return True


def _prose_text(soup):
    for node in soup.find_all(string=True):
        if isinstance(node, NavigableString) and type(node) is NavigableString and _in_prose(node):
            yield str(node)


def raw_pipe_tables(soup):
    out = []
    for p in soup.find_all("p"):
        text = p.get_text()
        if len(PIPE_TABLE.findall(text)) >= 2 or re.search(r"\|\s*:?-{3,}:?\s*\|", text):
            out.append(f"raw pipe table: {text.strip()[:60]!r}")
    return out


def raw_latex(soup):
    out = []
    for text in _prose_text(soup):
        m = LATEX.search(text)
        if m:
            out.append(f"raw LaTeX outside math ({m.group(0)!r}): {text.strip()[:60]!r}")
    return out


def mathjax_errors(soup):
    out = []
    for name in MATHJAX_ERROR:
        for tag in soup.find_all(class_=name) + soup.find_all(name):
            out.append(f"MathJax error marker <{tag.name} class={name}>: {tag.get_text()[:60]!r}")
    for tag in soup.find_all(class_="math"):
        tex = re.sub(r"\\[{}]", "", tag.get_text())
        if tex.count("{") != tex.count("}"):
            out.append(f"unbalanced braces in math: {tag.get_text().strip()[:60]!r}")
    return out


def broken_references(soup, page, site):
    """``site`` maps each page's path (relative to the build root) to the ids it defines."""
    out = []
    for text in _prose_text(soup):
        if UNPARSED_ROLE.search(text):
            out.append(f"unparsed role: {text.strip()[:60]!r}")
        if "??" in text or "[?]" in text:
            out.append(f"unresolved reference marker: {text.strip()[:60]!r}")
    for tag in soup.find_all(class_=["problematic", "system-message"]):
        out.append(f"docutils problem: {tag.get_text().strip()[:60]!r}")
    for tag in soup.find_all(class_="xref"):
        if tag.find_parent("a") is None and tag.name != "a":
            out.append(f"unresolved reference: {tag.get_text().strip()[:60]!r}")
    for a in soup.find_all("a", href=re.compile("#equation-")):
        before = a.previous_sibling
        if isinstance(before, NavigableString) and re.search(r"\((eq\.|equation|see)?\s*$", before):
            out.append(f"equation reference in extra parentheses: {' '.join(before[-20:].split())}{a.get_text()}")
    for a in soup.find_all("a", href=True):
        href = a["href"]
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
            continue
        if parts.path:
            target = (Path(page).parent / unquote(parts.path)).as_posix()
            target = _normalise(target)
            if target.endswith("/"):
                target += "index.html"
            if not target.endswith(".html"):
                continue  # images, sources, downloads: Sphinx copies those itself
            if target not in site:
                out.append(f"link to a missing page: {href}")
                continue
        else:
            target = page
        anchor = unquote(parts.fragment)
        if anchor and target in site and anchor not in site[target]:
            out.append(f"link to a missing anchor: {href}")
    return out


def _normalise(path):
    stack = []
    for part in path.split("/"):
        if part == "..":
            if stack:
                stack.pop()
        elif part not in ("", "."):
            stack.append(part)
    return "/".join(stack) + ("/" if path.endswith("/") else "")


def images_without_alt(soup):
    out = []
    for img in soup.find_all("img"):
        src = img.get("src", "")
        alt = (img.get("alt") or "").strip()
        if not alt or alt == src or alt == Path(src).name or re.fullmatch(r"\S+\.(png|svg|jpe?g|gif)", alt):
            out.append(f"image without alt text: {src}")
    return out


def docstring_listings(soup):
    out = []
    for block in soup.find_all("div", class_="highlight"):
        if block.find_parent(class_="cell_output"):
            continue
        text = block.get_text()
        m = NUMPYDOC.search(text)
        if m:
            first = next((line for line in text.splitlines() if line.strip()), "")
            out.append(f"listing with a numpydoc {m.group(1)!r} section: {first.strip()[:60]!r}")
    return out


def check_page(html, page="page.html", site=None):
    """All problems of one page, as strings; ``site`` as in :func:`broken_references`."""
    soup = BeautifulSoup(html, "html.parser")
    main = soup.find("main") or soup  # the theme's navigation and search are not the book's text
    if site is None:
        site = {page: _ids(soup)}
    return (raw_pipe_tables(main) + raw_latex(main) + mathjax_errors(main)
            + broken_references(main, page, site) + images_without_alt(main)
            + docstring_listings(main))


def _ids(soup):
    return {tag["id"] for tag in soup.find_all(id=True)} | {
        tag["name"] for tag in soup.find_all("a", attrs={"name": True})}


def pages(root):
    skip = {"_static", "_sources", "_images", "_mathjax", "mathjax", "_modules"}
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if skip & set(rel.parts[:-1]) or rel.name in ("genindex.html", "search.html"):
            continue
        yield rel.as_posix(), path.read_text(encoding="utf-8")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).parent / "_build" / "html")
    if not root.is_dir():
        print(f"check_html: no built book at {root} (run `make book`)", file=sys.stderr)
        return 2
    texts = dict(pages(root))
    site = {page: _ids(BeautifulSoup(html, "html.parser")) for page, html in texts.items()}
    for extra in ("genindex.html", "search.html"):
        if (root / extra).exists():
            site[extra] = _ids(BeautifulSoup((root / extra).read_text(encoding="utf-8"), "html.parser"))
    n = 0
    for page, html in texts.items():
        for problem in check_page(html, page, site):
            print(f"{page}: {problem}")
            n += 1
    print(f"check_html: {len(texts)} pages, {n} problem{'s' * (n != 1)}")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
