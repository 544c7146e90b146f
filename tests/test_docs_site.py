"""The README is a front door and the docs site builds: `mkdocs build --strict` passes (no broken link, no page
left out of the nav), the README stays short, its set-up commands stay where CI reads them, and its links resolve."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 300
TEST_COMMAND = "pip install -e '.[test]' && python -m pytest -q"  # .ci/run runs exactly this

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                        str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert (site / "index.html").is_file()


def test_readme_is_short():
    n = len(_readme().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it a front door (<= {MAX_README_LINES}) and move the rest to docs/"


def test_readme_first_block_is_the_two_setup_commands():
    text = _readme()
    assert text.startswith("# condiff\n")
    m = FENCE.search(text)
    assert m is not None, "README.md has no fenced code block"
    commands = [line.strip() for line in m.group(2).splitlines() if line.strip()]
    assert len(commands) == 2, commands
    install, test = commands
    assert install.startswith("pip install -e . && condiff generate "), install
    assert test == TEST_COMMAND


def test_readme_relative_links_exist():
    text = FENCE.sub("", _readme())  # commands are not links
    text = re.sub(r"`[^`\n]*`", "", text)  # nor are code spans
    targets = [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]
    assert targets, "README.md links nothing"
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).is_file()]
    assert not missing, f"README.md links files that do not exist: {missing}"


def _documented_commands():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from docs_commands import documented_commands

    return documented_commands(ROOT)


def test_every_documented_command_parses_with_condiffs_own_parser():
    """benchmarks/docs_commands.py runs them all (minutes to hours); this catches a renamed or removed option at
    once: each `condiff ...` line of a fenced block, as the shell splits it, is accepted by the CLI's parser."""
    import shlex

    from condiff.cli.main import build_parser

    parser = build_parser()
    checked = 0
    for c in _documented_commands():
        lex = shlex.shlex(c.text, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens, parts = list(lex), [[]]
        for t in tokens:  # the commands of `a && b; c`
            parts.append([]) if t in ("&&", ";", "||") else parts[-1].append(t)
        for words in parts:
            if "condiff.cli" in words:
                words = ["condiff"] + words[words.index("condiff.cli") + 1:]
            if words[:1] != ["condiff"]:
                continue
            try:
                parser.parse_args(words[1:])
            except SystemExit as e:
                raise AssertionError(f"{c.where}: the parser refuses `{c.text}`") from e
            checked += 1
    assert checked >= 60, checked
