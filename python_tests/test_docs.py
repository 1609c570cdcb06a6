"""The documentation stays navigable: README.md and docs/*.md link only to files
(and headings) that exist, the README stays a front page, and docs/benchmarks.md
is exactly what bench/report.py generates from bench/results/."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_BYTES = 12 * 1024
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text):
    """The text without fenced code blocks and inline code (their brackets are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    return {anchor(h) for h in _HEADING.findall(_prose(path.read_text(encoding="utf-8")))}


def broken_links(page):
    """(target, why) for every relative link in page that does not resolve."""
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append((target, f"{resolved} does not exist"))
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append((target, f"no heading with anchor #{fragment} in {resolved.name}"))
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md) [ok](other.md#a-heading) ![gone](images/none.png) "
                    "[bad anchor](other.md#missing) [web](https://example.com/x) `[code](nowhere.md)`\n"
                    "```\n[fenced](nowhere.md)\n```\n")
    assert [target for target, _ in broken_links(page)] == ["images/none.png", "other.md#missing"]


def test_anchor_matches_github():
    assert anchor("NCP on your own VAE's flat latents") == "ncp-on-your-own-vaes-flat-latents"
    assert anchor("`sir_resample`") == "sir_resample"
    assert anchor("The CUDA kernels without a GPU") == "the-cuda-kernels-without-a-gpu"


def test_readme_is_a_front_page():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes (at most {README_MAX_BYTES}): "
                                      "move detail into docs/ and link to it")


def test_benchmarks_page_is_generated_from_the_results():
    generated = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--markdown"],
                               capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"), (
        "docs/benchmarks.md differs from bench/report.py's output: run "
        "`python bench/report.py --markdown > docs/benchmarks.md`")


def test_every_results_file_is_documented():
    pages = "".join((ROOT / "docs" / name).read_text(encoding="utf-8")
                    for name in ("benchmarks.md", "results.md", "paper-scale.md"))
    undocumented = [p.name for p in sorted((ROOT / "bench" / "results").glob("*.json"))
                    if f"bench/results/{p.name}" not in pages]
    assert undocumented == []


def test_every_op_folder_has_its_where_row_and_named_files():
    """docs/ops.md's 'where' table has a row per csrc/ops/ folder, and each folder's
    wrapper, test and benchmark follow the naming rule (ncpfast/ops/F.py,
    python_tests/test_F.py, bench/test_bench_F.py)."""
    text = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    where = text[text.index("## Where each op lives"):]
    for folder in sorted(p.name for p in (ROOT / "csrc" / "ops").iterdir() if p.is_dir()):
        assert f"| `{folder}` |" in where, folder
        for path in (f"ncpfast/ops/{folder}.py", f"python_tests/test_{folder}.py", f"bench/test_bench_{folder}.py",
                     f"csrc/ops/{folder}/{folder}.cpp"):
            assert (ROOT / path).is_file(), path
