"""Read the WordNet 3.0 database files that Debian's `wordnet-base` installs (the `data.<pos>` files).

Each synset line is `offset lex_filenum ss_type w_cnt words... p_cnt pointers... | gloss`; the gloss is a
definition followed by quoted example sentences. `lex_filenum` indexes the 45 lexicographer files below.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserInputError

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = ("noun", "verb", "adj", "adv")
# lexnames(5WN): lexicographer file number -> name
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation "
    "noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception "
    "verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclasses.dataclass(frozen=True)
class Synset:
    offset: str
    pos: str
    lexname: str
    definition: str
    examples: tuple[str, ...]


def parse_line(line: str, pos: str) -> Synset | None:
    if line.startswith("  ") or " | " not in line:
        return None  # license header lines start with two spaces
    head, gloss = line.rstrip("\n").split(" | ", 1)
    fields = head.split()
    lexname = LEXNAMES[int(fields[1])]
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if e.strip())
    return Synset(fields[0], pos, lexname, definition, examples)


def synsets(root: Path = WORDNET_DIR) -> Iterator[Synset]:
    """Every synset of the four parts of speech, in file order (deterministic)."""
    for pos in POS_FILES:
        path = root / f"data.{pos}"
        if not path.exists():
            raise UserInputError(f"{path}: WordNet not found; install Debian's wordnet-base (`make setup` does)")
        with open(path, encoding="utf-8-sig", errors="strict") as f:
            for line in f:
                synset = parse_line(line, pos)
                if synset is not None and synset.definition:
                    yield synset
