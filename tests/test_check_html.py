"""book/check_html.py: each rule catches its fault, and clean HTML passes."""
from __future__ import annotations

import pytest

from cases import script_module
from conftest import ROOT

check_html = script_module(ROOT / "book" / "check_html.py", "check_html")


def page(body):
    return f"<html><body><main>{body}</main></body></html>"


CLEAN = page("""
<h1 id="title">Chapter 4<a class="headerlink" href="#title">#</a></h1>
<p>The state <span class="math notranslate nohighlight">\\(h_k = \\bar A h_{k-1} + \\bar B u_k\\)</span>
follows <a class="reference internal" href="#equation-eq-zoh">(4.3)</a> and
<a class="reference internal" href="other.html#sec">Section 2</a>; a pipe | in prose is fine.</p>
<div class="math notranslate nohighlight" id="equation-eq-zoh">\\[\\bar A = \\exp(\\Delta A)\\]</div>
<table><tr><td>raster</td><td>0.98</td></tr></table>
<img alt="the impulse response decays" src="../_images/abc.png"/>
<div class="highlight"><pre>def zoh(A, B, delta):
    # Parameters of the step
    return np.exp(delta * A)
</pre></div>
<div class="cell_output"><div class="highlight"><pre>Parameters
----------
(printed help is output, not a listing)</pre></div></div>
<p>Prose may name prices: $5 and $10.</p>
""")
SITE = {"page.html": {"title", "equation-eq-zoh"}, "other.html": {"sec"}}


def problems(body, site=SITE):
    return check_html.check_page(page(body), "page.html", site)


def test_clean_page_passes():
    assert check_html.check_page(CLEAN, "page.html", SITE) == []


def test_raw_pipe_table():
    found = problems("<p>| order | params |\n|---|---|\n| raster | 10 |</p>")
    assert len(found) == 1 and "raw pipe table" in found[0]


@pytest.mark.parametrize("text", [r"so \frac{1}{2} of it", r"$$ x = 1 $$", r"where \(x\) is",
                                  r"\begin{aligned} a \end{aligned}", r"the $\bar A$ matrix"])
def test_raw_latex_outside_math(text):
    found = problems(f"<p>{text}</p>")
    assert found and all("raw LaTeX" in f for f in found)


def test_latex_inside_math_and_code_is_not_raw():
    assert problems(r'<p><span class="math">\(\frac{1}{2}\)</span></p>'
                    r'<div class="highlight"><pre>s = r"\frac{a}{b}"</pre></div>') == []


def test_mathjax_error_marker():
    found = problems('<p><span class="MathJax_Error">Undefined control sequence</span></p>')
    assert found and "MathJax error" in found[0]


def test_unbalanced_math():
    found = problems(r'<p><span class="math">\(\bar{A\)</span></p>')
    assert len(found) == 1 and "unbalanced" in found[0]


@pytest.mark.parametrize("body, what", [
    ("<p>as in {eq}`eq-zoh`</p>", "unparsed role"),
    ("<p>see {cite:p}`gu2023mamba`</p>", "unparsed role"),
    ("<p>see Figure ?? below</p>", "unresolved reference marker"),
    ('<p><span class="xref std std-ref">eq-missing</span></p>', "unresolved reference"),
    ('<p><a href="missing.html">there</a></p>', "missing page"),
    ('<p><a href="other.html#nowhere">there</a></p>', "missing anchor"),
    ('<p><a href="#nowhere">here</a></p>', "missing anchor"),
    ('<p>the recurrence (<a href="#equation-eq-zoh">(4.3)</a>) gives</p>', "extra parentheses"),
    ('<p>as before (eq. <a href="#equation-eq-zoh">(4.3)</a>)</p>', "extra parentheses"),
])
def test_broken_cross_reference(body, what):
    found = problems(body)
    assert len(found) == 1 and what in found[0], found


def test_external_links_are_not_checked():
    assert problems('<p><a href="https://arxiv.org/abs/2312.00752#x">paper</a></p>') == []


@pytest.mark.parametrize("img", ['<img src="a.png"/>', '<img alt="" src="a.png"/>',
                                 '<img alt="../_images/a.png" src="../_images/a.png"/>'])
def test_image_without_alt_text(img):
    found = problems(img)
    assert len(found) == 1 and "alt text" in found[0]


@pytest.mark.parametrize("section", ["Parameters", "Returns"])
def test_listing_with_numpydoc_section(section):
    listing = (f'<div class="highlight"><pre>def f(x):\n    """Do it.\n\n    {section}\n'
               f'    {"-" * len(section)}\n    x : ndarray\n    """\n</pre></div>')
    found = problems(listing)
    assert len(found) == 1 and section in found[0]


def test_main_reports_and_fails(tmp_path, capsys):
    (tmp_path / "index.html").write_text(CLEAN.replace("other.html#sec", "#title"))
    assert check_html.main([str(tmp_path)]) == 0
    (tmp_path / "bad.html").write_text(page("<p>| a | b |\n|---|---|</p>"))
    assert check_html.main([str(tmp_path)]) == 1
    assert "bad.html: raw pipe table" in capsys.readouterr().out
