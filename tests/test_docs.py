"""The documentation is tested: the site builds, every code block runs, and the API examples are true.

- ``mkdocs build --strict`` (``mkdocs.yml``, ``docs/``) succeeds: a broken link, anchor or API
  reference fails it. README.md is not part of the site, so its links (and every
  ``docs/paper.md#anchor`` that the code and tests cite) are checked against the built pages.
- Every fenced code block of README.md and ``docs/*.md`` is, by the HTML comment on the line
  before it:
  - nothing: a ``python`` block is run (a fresh namespace, in a temporary folder holding
    ``song.wav``, 30 s of 16 kHz audio, and ``my_audio/``, eight 12 s tracks); a ``bash`` / ``sh``
    block is parse-checked line by line: each ``kmssl`` command by ``kmssl``'s own argument parser
    (a wrong option or subcommand fails), ``python3 bootstrap.py X`` by bootstrap's commands,
    ``python path.py`` by the file's existence, ``pip install 'keras-music-ssl[x]'`` by the extras,
    ``make X`` by the Makefile's targets; any other command fails the test;
  - ``<!-- test: slow (why) -->``: a ``python`` block run with the slow tests only (``-m slow``;
    ``python3 bootstrap.py test-slow``), skipped otherwise;
  - ``<!-- test: skip (why) -->``: not run, for what cannot exist here (a dataset, the network, a
    GPU, Node.js); the reason is required.
- The ``Examples:`` of each public class and function in the API reference runs as a doctest
  (those that train or export: with the slow tests), and each has ``Args:``, ``Returns:`` and
  ``Examples:`` sections.
"""

import argparse
import contextlib
import doctest
import importlib
import io
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*test:\s*(skip|slow)\s*(?:\((.*)\))?\s*-->\s*$")
FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")
SHELLS = ("bash", "sh", "shell", "console")


def code_blocks(path):
    """(path, line number, language, code, marker, reason) of each fenced block at column 0."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language = match.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence)
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous.strip())
        blocks.append((path, i + 1, language, "\n".join(lines[i + 1:end]),
                       marker.group(1) if marker else None, (marker.group(2) or "").strip() if marker else ""))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def block_id(block):
    return f"{block[0].relative_to(ROOT)}:{block[1]}"


def params(kinds):
    chosen = []
    for block in BLOCKS:
        _, _, language, _, marker, _ = block
        kind = "skip" if marker == "skip" else "python" if language == "python" else "shell" if language in SHELLS \
            else "other"
        if kind in kinds:
            marks = [pytest.mark.slow] if marker == "slow" else []
            chosen.append(pytest.param(block, id=block_id(block), marks=marks))
    return chosen


def slow_selected(config):
    """The slow examples run when asked for by marker (``run_backends.py --slow``: ``-m slow``)."""
    expression = config.getoption("-m") or ""
    return "slow" in expression and "not slow" not in expression


@pytest.fixture(autouse=True)
def _slow_only_when_asked(request):
    if request.node.get_closest_marker("slow") and not slow_selected(request.config):
        pytest.skip("slow: runs with `python tests/run_backends.py --slow` (pytest -m slow)")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working folder with the audio files the examples name."""
    import soundfile

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 30) / 16000
    song = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) + 0.05 * rng.standard_normal(t.size)
    soundfile.write(tmp_path / "song.wav", song.astype("float32"), 16000)
    (tmp_path / "my_audio").mkdir()
    for k in range(8):
        track = 0.2 * np.sin(2 * np.pi * (110 + 40 * k) * np.arange(16000 * 12) / 16000)
        track = track + 0.05 * rng.standard_normal(track.size)
        soundfile.write(tmp_path / "my_audio" / f"track{k}.wav", track.astype("float32"), 16000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("KMSSL_DATA_DIR", os.path.join(tempfile.gettempdir(), "kmssl-tests-datasets"))
    return tmp_path


# --- the site -----------------------------------------------------------------------------------

def anchors_of(site, page):
    """The ids of a built page (``docs/X.md`` -> ``site/X/index.html``)."""
    name = pathlib.PurePosixPath(page).with_suffix("")
    html = site / ("index.html" if str(name) == "index" else f"{name}/index.html")
    assert html.is_file(), f"{page} is not a page of the site"
    return set(re.findall(r'\bid="([^"]+)"', html.read_text(encoding="utf-8")))


@pytest.mark.backend_independent
def test_site_builds_strict_and_links_resolve(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        "mkdocs build --strict failed (is the docs extra installed? pip install -e '.[docs]'):\n"
        + result.stdout[-4000:] + result.stderr[-4000:])

    # README.md is the repository's first page, not the site's: check its relative links here.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        assert file, f"README.md: an in-page link {target!r} (the README has no such anchors on the site)"
        assert (ROOT / file).exists(), f"README.md links to {file}, which does not exist"
        if anchor:
            assert file.startswith("docs/") and file.endswith(".md"), target
            assert anchor in anchors_of(site, file[len("docs/"):]), f"README.md: no #{anchor} in {file}"

    # The code and the tests cite the paper notes by anchor: each must exist.
    ids = anchors_of(site, "paper.md")
    cited = set()
    for folder in ("keras_music_ssl", "tests", "benchmarks"):
        for source in (ROOT / folder).rglob("*.py"):
            if source != pathlib.Path(__file__).resolve():
                cited.update(re.findall(r"docs/paper\.md#([\w-]+)", source.read_text(encoding="utf-8")))
    assert cited, "no docs/paper.md#anchor cited in the code?"
    assert not cited - ids, f"docs/paper.md has no anchor for {sorted(cited - ids)}"


@pytest.mark.backend_independent
def test_readme_is_a_first_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move the details to docs/"
    text = "\n".join(lines)
    assert "python3 bootstrap.py quickstart" in text and "python3 bootstrap.py test" in text


@pytest.mark.backend_independent
def test_no_citation_outside_the_repository():
    """Code, tests and docs cite the project's own docs/, never a spec users do not have."""
    pattern = re.compile(r"spec §|shared/(spec|data)")
    found = []
    for folder in ("keras_music_ssl", "tests", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and path != pathlib.Path(__file__).resolve():
                found += [f"{path.relative_to(ROOT)}:{n}" for n, line in
                          enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if pattern.search(line)]
    assert not found, f"cite docs/paper.md instead: {found}"


# --- code blocks ---------------------------------------------------------------------------------

@pytest.mark.backend_independent
def test_every_block_is_tested_or_skipped_with_a_reason():
    assert len(BLOCKS) > 20
    for path, line, language, _, marker, reason in BLOCKS:
        where = f"{path.relative_to(ROOT)}:{line}"
        if marker in ("skip", "slow"):
            assert reason, f"{where}: `<!-- test: {marker} (...) -->` needs its reason in brackets"
        if marker == "slow":
            assert language == "python", f"{where}: only python blocks can be slow"
        if marker is None:
            assert language == "python" or language in SHELLS, (
                f"{where}: a ```{language} block is neither run nor parse-checked: mark it "
                "`<!-- test: skip (why) -->`")


@pytest.mark.tf_only
@pytest.mark.parametrize("block", params({"python"}))
def test_python_block_runs(block, workdir):
    path, line, _, code, _, _ = block
    exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), {"__name__": "__docs__"})


def kmssl_parser(command):
    """``kmssl COMMAND``'s argument parser, as ``keras_music_ssl.cli`` builds it."""
    from keras_music_ssl import cli

    assert command in cli.COMMANDS, f"kmssl has no command {command!r}"
    parser = argparse.ArgumentParser(prog="kmssl")
    subparsers = parser.add_subparsers(dest="command")
    module = importlib.import_module(f"keras_music_ssl.cli.{cli.COMMANDS[command]}")
    module.add_arguments(subparsers.add_parser(command))
    return parser


def shell_commands(code):
    """Each command of a shell block as its words: continuations joined, comments, redirections and
    environment assignments dropped, ``$VARIABLES`` given a value."""
    for logical in re.sub(r"\\\n", " ", code).split("\n"):
        words = shlex.split(logical, comments=True)
        words = [re.sub(r"\$\w+", "1", word) for word in words]
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        for stop in (">", ">>", "|", "&&", ";", "2>"):
            if stop in words:
                words = words[:words.index(stop)]
        if words:
            yield words


def check_command(words):
    program = words[0]
    if program == "kmssl":
        assert len(words) > 1, "kmssl with no command"
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                kmssl_parser(words[1]).parse_args(words[1:])
        except SystemExit:
            raise AssertionError(f"`{shlex.join(words)}`: {stderr.getvalue().strip()}") from None
    elif program in ("python", "python3"):
        script = words[1]
        assert (ROOT / script).is_file(), f"{script} does not exist"
        if script == "bootstrap.py":
            commands = re.findall(r"^ {4}python3 bootstrap\.py ([\w-]+)", (ROOT / script).read_text(), re.M)
            assert len(words) > 2 and words[2] in commands, f"bootstrap.py has the commands {commands}"
    elif program == "pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for word in words[2:]:
            match = re.fullmatch(r"keras-music-ssl\[([\w,]+)\]", word)
            if match:
                for extra in match.group(1).split(","):
                    assert extra in extras, f"pyproject.toml has no extra {extra!r}"
    elif program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert words[1] in targets, f"the Makefile has no target {words[1]!r}"
    else:
        raise AssertionError(f"`{shlex.join(words)}`: not a command this test can check; "
                             "mark the block `<!-- test: skip (why) -->`")


@pytest.mark.backend_independent
@pytest.mark.parametrize("block", params({"shell"}))
def test_shell_block_parses(block):
    commands = list(shell_commands(block[3]))
    assert commands, "an empty shell block"
    for words in commands:
        check_command(words)


@pytest.mark.backend_independent
def test_parse_check_catches_a_wrong_option():
    check_command(["kmssl", "tag", "song.mp3", "--preset", "musicnn_mtt", "--top", "5"])
    with pytest.raises(AssertionError, match="unrecognized arguments"):
        check_command(["kmssl", "tag", "song.mp3", "--preset", "musicnn_mtt", "--topk", "5"])
    with pytest.raises(AssertionError, match="no command"):
        check_command(["kmssl", "tags", "song.mp3"])


@pytest.mark.parametrize("block", params({"skip"}))
def test_skipped_block(block):
    pytest.skip(f"{block_id(block)}: {block[5]}")


# --- API docstrings ------------------------------------------------------------------------------

API = {  # the API reference's objects; True: its example trains, exports or builds a dataset (slow)
    "keras_music_ssl.frontend.LogMelSpectrogram": False,
    "keras_music_ssl.backbone.MusicEncoder": False,
    "keras_music_ssl.backbone.ModifiedResNet": False,
    "keras_music_ssl.backbone.AttentionPool2D": False,
    "keras_music_ssl.pretext.contrastive.Contrastive": False,
    "keras_music_ssl.pretext.byol.BYOL": False,
    "keras_music_ssl.pretext.clustering.Clustering": False,
    "keras_music_ssl.pretext.barlow_twins.BarlowTwins": False,
    "keras_music_ssl.pretext.vicreg.VICReg": False,
    "keras_music_ssl.tagger.TagHead": False,
    "keras_music_ssl.tagger.MusicTagger": False,
    "keras_music_ssl.timeline.timeline": False,
    "keras_music_ssl.data.audio.load_audio": False,
    "keras_music_ssl.export.export": True,
    "keras_music_ssl.export.runtime.load_exported": True,
    "keras_music_ssl.train.pretrain": True,
    "keras_music_ssl.probe.harness.run_probe": True,
}


def api_object(name):
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", sorted(API))
def test_api_docstring_sections(name):
    import keras_music_ssl  # noqa: F401  (registers the classes before any submodule is read)

    doc = api_object(name).__doc__ or ""
    missing = [section for section in ("Args:", "Returns:", "Examples:") if f"\n    {section}\n" not in doc]
    assert not missing, f"{name}'s docstring lacks {missing}"


@pytest.mark.tf_only
@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if slow else [])
                                  for name, slow in sorted(API.items())])
def test_api_example_runs(name, workdir):
    obj = api_object(name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    assert tests and tests[0].examples, f"{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    output = io.StringIO()
    for test in tests:
        runner.run(test, out=output.write)
    assert runner.failures == 0, output.getvalue()
