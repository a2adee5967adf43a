"""The built-in WordNet task (``data.kind: wordnet``): the pinned Debian package, its parser, the synonym scorer,
the trivial baseline, and the real teacher measurably above that baseline.

The package is fetched with ``apt-get download`` once per machine into ``~/.cache/edgedistill/data/`` (6.4 MB).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill.toolchain.llm.tasks import get_baseline, get_generator, score
from edgedistill.toolchain.llm.tasks import wordnet as wn

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
DATA = HEADER + (
    "00000001 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis; "
    '"the dog barked all night"  \n'
    "00000002 05 n 01 cur 0 000 | an inferior dog or one of mixed breed  \n"
    "00000003 05 n 01 hot_dog 0 000 | a frankfurter served hot on a bun  \n"
    "00000004 05 n 02 ice 0 water_ice 0 000 | water frozen in the solid state  \n")
INDEX = HEADER + (
    "dog n 2 1 @ 2 5 00000001 00000002\n"       # tagged 5 times; first sense 00000001
    "cur n 1 1 @ 1 1 00000002\n"                # tagged once: not common
    "hot_dog n 1 0 1 3 00000003\n"              # two words: not a plain-word headword
    "ice n 1 0 1 9 00000004\n")                 # a word the prompt's shots use


@pytest.fixture()
def fake_wordnet(tmp_path: Path) -> Path:
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "data.noun").write_text(DATA)
    (tmp_path / "dict" / "index.noun").write_text(INDEX)
    return tmp_path


def test_parser_picks_common_plain_word_senses_and_their_synonyms(fake_wordnet: Path) -> None:
    senses = wn.common_senses(fake_wordnet)
    assert [(s.lemmas[0], s.definition) for s in senses] == [("dog", "a member of the genus Canis")]
    assert wn.synonyms(fake_wordnet, "dog") == {"dog", "domestic dog", "canis familiaris", "cur"}
    assert wn.synonyms(fake_wordnet, "unknown") == {"unknown"}


def test_a_line_that_is_not_wordnet_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "data.noun"
    bad.write_text(HEADER + "00000001 05 n zz dog\n")
    with pytest.raises(wn.WordNetError, match=r"data.noun: line 2: not a WordNet data line"):
        wn.parse_data(bad)


@pytest.mark.parametrize(("pred", "hit"), [
    ("dog", True), (" Dog.\n\nDefinition: a cat", True), ("cur", True), ("'dog'", True),
    ("dogs", False), ("The dog", False), ("", False), ("puppy", False)])
def test_the_answer_is_its_first_word_and_a_synonym_counts(fake_wordnet: Path, pred: str, hit: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wn, "ensure", lambda log=None: fake_wordnet)
    got = wn.score([pred], ["dog"])
    assert got["task_score"] == float(hit)
    assert got["exact_word"] == float(wn.first_word(pred) == "dog")


def test_the_pinned_package_gives_the_real_task_with_its_source_recorded() -> None:
    examples = get_generator("wordnet")(100_000, 0)
    assert len(examples) == 1922  # WordNet 3.0's common single-word noun senses (tagged at least twice)
    assert len({e.id for e in examples}) == len(examples)
    assert not {"puppy", "week", "ice"} & {e.output for e in examples}  # the prompt's own shots
    e = examples[0]
    assert e.prompt.startswith("Definition: a young dog\nWord: puppy") and e.prompt.endswith(f"{e.input}\nWord:")
    src = wn.recorded_source()
    assert (src["package"], src["version"], src["sha256"]) == ("wordnet-base", "1:3.0-37", wn.SOURCE.sha256)
    assert "Princeton" in (wn.data_dir() / "COPYRIGHT").read_text()
    what, preds = get_baseline("wordnet")(examples)
    base = score(preds, [x.output for x in examples], None, "wordnet")["task_score"]
    assert 0 < base < 0.05, (what, base)  # copying a word of the definition almost never names it


def test_a_deb_with_the_wrong_hash_is_refused_in_one_line(tmp_path: Path) -> None:
    """A fresh HOME with a stand-in .deb offered through $EDGEDISTILL_DEBS: the sha256 check refuses it before
    anything is unpacked, through the real CLI's error path (exit 2, one line)."""
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / wn.SOURCE.deb).write_bytes(b"!<arch>\nnot the package")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: llm\nname: wn\ndata: {kind: wordnet}\n")
    env = {"HOME": str(tmp_path / "home"), "EDGEDISTILL_DEBS": str(debs), "PATH": "/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgedistill.toolchain.cli", "run", str(recipe), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "sha256" in ln]
    assert len(lines) == 1 and wn.SOURCE.deb in lines[0] and "refusing" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "home/.cache/edgedistill/data" / wn.data_dir().name).exists()


def test_the_real_teacher_names_words_well_above_the_trivial_baseline() -> None:
    """SmolLM2-135M-Instruct's release GGUF on 40 definitions, greedy: it names the word (or a synonym) for about
    17 % of common nouns (here 6 of 40, AMD EPYC, 2026-12-07). The bar, 4 of 40 (10 %), leaves room for greedy
    answers that flip with another CPU's summation order and is 5× the baseline's rate on all 1,922 definitions
    (1.9 %, asserted above; 2 of these 40)."""
    from edgedistill.toolchain.llm import pretrained

    pretrained.ensure("smollm2-135m-instruct")
    gguf = pretrained.release_gguf("smollm2-135m-instruct")
    examples = get_generator("wordnet")(40, 1)
    code = ("import json,sys\nfrom llama_cpp import Llama\n"
            "m=Llama(sys.argv[1],n_ctx=256,n_threads=2,verbose=False,seed=0)\n"
            "for p in json.load(sys.stdin):\n"
            "  print(json.dumps(m.create_completion(p,max_tokens=4,temperature=0)['choices'][0]['text']))\n")
    import json

    proc = subprocess.run([sys.executable, "-c", code, str(gguf)], input=json.dumps([e.prompt for e in examples]),
                          capture_output=True, text=True, timeout=600, check=True)
    preds = [json.loads(line) for line in proc.stdout.splitlines()]
    refs = [e.output for e in examples]
    teacher = round(score(preds, refs, None, "wordnet")["task_score"] * len(refs))
    assert teacher >= 4, (teacher, preds[:10])
