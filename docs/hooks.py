"""MkDocs hooks: pages that live outside docs/ join the site, and the CLI reference is generated at build time.

README.md becomes the home page (its links into docs/ rewritten to the site's paths), results/ and
traces/README.md are served as they are in the repository, and ``cli.md`` is built from the argparse parsers
(docs/gen_cli.py), so none of them is copied into docs/ and none can drift.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))
from gen_cli import cli_reference  # docs/ is not a package: imported from its folder

#: repository files served by the site under their own paths (globs relative to the repository root)
REPO_PAGES = ("README.md", "results/*.md", "results/*.png", "results/*.svg", "traces/README.md")
#: a Markdown link or image: [text](target) with an optional title
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the repository's pages and the generated CLI reference to the site's files."""
    for pattern in REPO_PAGES:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            files.append(File(rel, str(ROOT), config.site_dir, config.use_directory_urls))
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Make links that work in the repository work on the site too.

    README's ``docs/x.md`` becomes ``x.md``; a docs page's ``../results/x.md`` (a repository page the site
    serves under its own path) loses the hop out of docs/; in repository pages, a link to a file the site does
    not hold (a script, a folder) becomes its path in code, so a new link there cannot break the strict build.
    """
    src = page.file.src_uri
    base = posixpath.dirname(src)
    in_docs = Path(page.file.abs_src_path or DOCS).is_relative_to(DOCS)

    def fix(m: re.Match) -> str:
        bang, text, target, title = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if re.match(r"[a-z]+:|#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        if src == "README.md" and path.startswith("docs/"):
            path = path[len("docs/"):]
        elif in_docs:
            repo = _normalise(posixpath.join("docs", base, path))
            if not repo.startswith("docs/") and files.get_file_from_path(repo) is not None:
                path = posixpath.relpath(repo, base or ".")
        fixed = path + ("#" + anchor if anchor else "")
        if in_docs or files.get_file_from_path(_normalise(posixpath.join(base, path))) is not None:
            return f"{bang}[{text}]({fixed}{title})"
        return f"{text} (`{target}`)" if text != target else f"`{target}`"
    return LINK.sub(fix, markdown)


def _normalise(path: str) -> str:
    """``a/b/../c`` -> ``a/c`` without touching the file system."""
    out: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if out:
                out.pop()
        elif part not in ("", "."):
            out.append(part)
    return "/".join(out)
