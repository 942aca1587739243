"""Copy MathJax (shipped by the ``jupyter-server-mathjax`` package) into the book's static files.

Jupyter Book 1.x loads MathJax from a CDN by default, so equations do not render for a
reader without network access.  ``make book`` runs this script first; ``_config.yml``
points Sphinx's ``mathjax_path`` at the copy.  Idempotent.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import jupyter_server_mathjax


def main() -> None:
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (src / "MathJax.js").is_file():
        raise SystemExit(f"MathJax.js not found under {src}; is jupyter-server-mathjax installed?")
    dst = Path(__file__).parent / "_mathjax" / "mathjax"
    if (dst / "MathJax.js").is_file():
        return
    shutil.copytree(src, dst, dirs_exist_ok=True)
    print(f"copied MathJax from {src} to {dst}")


if __name__ == "__main__":
    main()
