"""The built-in WordNet task: name the word a real dictionary definition defines (a reverse dictionary).

Data: Princeton WordNet 3.0 as Debian ships it (``wordnet-base``, pinned version and sha256, :data:`SOURCE`;
licence "WordNet 3.0": use, copy, modify and distribute with the copyright notice kept, recorded in the cache's
``source.json`` and ``COPYRIGHT``). :func:`ensure` fetches the ``.deb`` once per machine with ``apt-get download``
(no maintainer script runs: it is unpacked with ``dpkg-deb -x``), checks its sha256, and keeps the database files
under ``~/.cache/edgedistill/data/``. Offline, put the ``.deb`` in a folder named by ``$EDGEDISTILL_DEBS``.

Examples: one per common noun sense — the first sense of a noun that the WordNet sense-tagged corpora use at least
:data:`MIN_TAGGED` times — whose first lemma is one plain word. The input is the definition (the gloss up to its
first ``;``, without the usage examples); the reference is that lemma. The prompt shows three hand-written
definition/word pairs first (:data:`PROMPT_TEMPLATE`; their words are not in the pool): a pretrained model needs
them to answer in the format (SmolLM2-135M-Instruct: 1 % with none, ~17 % with three, on 100 definitions).

Scoring (``wordnet``): the first word of the output, lower-cased and without punctuation, is the reference or
another lemma of one of the reference's noun senses (a WordNet synonym). The trivial baseline (:func:`baseline`)
copies the definition's longest word; it scores about 1 %.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgedistill.core import locks
from edgedistill.core.errors import UserError
from edgedistill.core.fileio import read_json, sha256_file, write_json
from edgedistill.core.paths import tools_root
from edgedistill.core.procs import dies_with_us
from edgedistill.toolchain.llm.data import Example
from edgedistill.toolchain.llm.tasks import BASELINES, GENERATORS, SCORERS, SOURCES

#: a noun sense is "common" when its lemma's senses were tagged at least this often in WordNet's corpora
MIN_TAGGED = 2
PROMPT_TEMPLATE = ("Definition: a young dog\nWord: puppy\n\n"
                   "Definition: a period of seven consecutive days\nWord: week\n\n"
                   "Definition: water frozen in the solid state\nWord: ice\n\n"
                   "Definition: {input}\nWord:")
_SHOT_WORDS = frozenset({"puppy", "week", "ice"})


class WordNetError(UserError, RuntimeError):
    """The WordNet package cannot be fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class DebSource:
    """A Debian package pinned by version and by the sha256 of its ``.deb``."""

    package: str
    version: str
    deb: str
    sha256: str
    licence: str


SOURCE = DebSource(package="wordnet-base", version="1:3.0-37", deb="wordnet-base_3.0-37_all.deb",
                   sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
                   licence="WordNet-3.0 (Princeton University; permissive, notice kept)")


def data_dir() -> Path:
    """Where :func:`ensure` keeps the database (whether or not it is there yet)."""
    return tools_root() / "data" / f"{SOURCE.package}-{SOURCE.version.split(':')[-1]}"


def _complete() -> bool:
    return (data_dir() / "source.json").is_file()


def ensure(log: Callable[[str], None] | None = None) -> Path:
    """The database folder, fetched and verified on first use (machine-wide lock; idempotent)."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    dest = data_dir()
    if _complete():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locks.locked(dest.with_name(f".{dest.name}.lock"), log=say):
        if _complete():
            return dest
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.tmp-", dir=dest.parent) as tmp:
            deb = _fetch_deb(Path(tmp), say)
            unpacked = Path(tmp) / "x"
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")
            staging = Path(tmp) / "out"
            shutil.copytree(unpacked / "usr/share/wordnet", staging / "dict")
            shutil.copy(unpacked / "usr/share/doc/wordnet-base/copyright", staging / "COPYRIGHT")
            write_json(staging / "source.json", {"package": SOURCE.package, "version": SOURCE.version,
                                                 "deb": SOURCE.deb, "sha256": SOURCE.sha256,
                                                 "licence": SOURCE.licence})
            shutil.rmtree(dest, ignore_errors=True)  # a folder left without source.json is incomplete
            staging.rename(dest)
    say(f"WordNet {SOURCE.version} ready in {dest}")
    return dest


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(dies_with_us(cmd), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise WordNetError(f"{what}: {cmd[0]} not found (Debian's apt and dpkg are needed to fetch "
                           f"{SOURCE.package})") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WordNetError(f"{what} failed: {last}")
    return proc


def _fetch_deb(into: Path, log: Callable[[str], None]) -> Path:
    """The pinned ``.deb``: from ``$EDGEDISTILL_DEBS``, else ``apt-get download`` (after ``apt-get update`` when
    the package lists are empty and we are root); sha256-checked either way."""
    local = os.environ.get("EDGEDISTILL_DEBS")
    if local and (Path(local) / SOURCE.deb).is_file():
        deb = Path(local) / SOURCE.deb
    else:
        log(f"fetching {SOURCE.package}={SOURCE.version} with apt-get download (once per machine)")
        spec = f"{SOURCE.package}={SOURCE.version}"
        cmd = ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", spec]
        proc = subprocess.run(dies_with_us(cmd), cwd=into, capture_output=True, text=True, check=False) \
            if shutil.which("apt-get") else None
        if proc is not None and proc.returncode != 0 and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"], "apt-get update")
            proc = subprocess.run(dies_with_us(cmd), cwd=into, capture_output=True, text=True, check=False)
        got = sorted(into.glob(f"{SOURCE.package}_*.deb"))  # apt names it with the epoch escaped (1%3a3.0-37)
        deb = got[0] if got else into / SOURCE.deb
        if proc is None or proc.returncode != 0 or not deb.is_file():
            why = "apt-get not found" if proc is None else \
                (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise WordNetError(f"cannot fetch {spec}: `apt-get download` failed ({why}); run `apt-get update` as "
                               f"root, or put {SOURCE.deb} in a folder named by $EDGEDISTILL_DEBS")
    if (got := sha256_file(deb)) != SOURCE.sha256:
        raise WordNetError(f"{deb}: sha256 {got} does not match the pinned {SOURCE.sha256}; refusing to use it")
    return deb


# -- the database ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sense:
    """One noun synset: its lemmas (first = the headword) and its definition."""

    offset: str
    lemmas: tuple[str, ...]
    definition: str


def _lemma(raw: str) -> str:
    return re.sub(r"\(.*\)$", "", raw).replace("_", " ").lower()


def parse_data(path: Path) -> dict[str, Sense]:
    """``data.noun`` → offset → sense (license header lines, which start with two spaces, are skipped)."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            try:
                count = int(fields[3], 16)
                lemmas = tuple(_lemma(fields[4 + 2 * i]) for i in range(count))
            except (IndexError, ValueError):
                raise WordNetError(f"{path}: line {n}: not a WordNet data line") from None
            definition = gloss.split(";")[0].strip() if sep else ""
            out[fields[0]] = Sense(fields[0], lemmas, definition)
    return out


def parse_index(path: Path) -> dict[str, tuple[int, list[str]]]:
    """``index.noun`` → lemma → (tagged sense count, synset offsets by frequency)."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split()
            try:
                rest = fields[4 + int(fields[3]):]
                out[_lemma(fields[0])] = (int(rest[1]), rest[2:])
            except (IndexError, ValueError):
                raise WordNetError(f"{path}: line {n}: not a WordNet index line") from None
    return out


@cache
def _database(folder: str) -> tuple[dict[str, Sense], dict[str, tuple[int, list[str]]]]:
    d = Path(folder) / "dict"
    return parse_data(d / "data.noun"), parse_index(d / "index.noun")


def common_senses(folder: Path, min_tagged: int = MIN_TAGGED) -> list[Sense]:
    """First senses of nouns tagged at least ``min_tagged`` times whose headword is one plain word, by offset."""
    senses, index = _database(str(folder))
    picked = {}
    for lemma, (tagged, offsets) in index.items():
        if tagged < min_tagged or not offsets or offsets[0] not in senses:
            continue
        s = senses[offsets[0]]
        if s.lemmas[0].isalpha() and s.lemmas[0] not in _SHOT_WORDS and s.definition and lemma == s.lemmas[0]:
            picked[s.offset] = s
    return [picked[k] for k in sorted(picked)]


def synonyms(folder: Path, word: str) -> frozenset[str]:
    """``word`` and every lemma of its noun senses."""
    senses, index = _database(str(folder))
    out = {word}
    for off in index.get(word, (0, []))[1]:
        out.update(senses[off].lemmas)
    return frozenset(out)


# -- task --------------------------------------------------------------------------------------------------------
@GENERATORS.register("wordnet")
def generate(n: int, seed: int) -> list[Example]:
    """Up to ``n`` definition → word examples (all common senses when ``n`` is larger), shuffled by ``seed``."""
    folder = ensure()
    senses = common_senses(folder)
    random.Random(seed).shuffle(senses)
    return [Example(f"wn-{s.offset}", s.definition, s.lemmas[0], PROMPT_TEMPLATE) for s in senses[:n]]


def first_word(text: str) -> str:
    """The first word of an answer, lower-cased, without surrounding punctuation."""
    m = re.search(r"[A-Za-z][A-Za-z'-]*", text)
    return m.group(0).lower().strip("'-") if m else ""


@SCORERS.register("wordnet")
def score(preds: list[str], refs: list[str], cfg: Any = None) -> dict[str, Any]:
    """The answer's first word is the reference or a WordNet synonym of it (``exact_word``: the reference only)."""
    folder = ensure()
    hits = [first_word(p) in synonyms(folder, r) for p, r in zip(preds, refs, strict=True)]
    exact = [first_word(p) == r for p, r in zip(preds, refs, strict=True)]
    n = max(1, len(refs))
    return {"task_score": sum(hits) / n, "exact_word": sum(exact) / n}


@BASELINES.register("wordnet")
def baseline(examples: list[Example]) -> tuple[str, list[str]]:
    """Copy the prompt: answer with the definition's longest word."""
    return ("copy the definition's longest word",
            [max(re.findall(r"[A-Za-z]+", e.input) or [""], key=len) for e in examples])


@SOURCES.register("wordnet")
def recorded_source() -> dict[str, Any]:
    """Where the data came from (package, version, sha256, licence), for the run's report."""
    return read_json(ensure() / "source.json")
