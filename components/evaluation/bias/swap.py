"""Whole-word, case-preserving identity-term swaps between the groups of one axis ("he" <-> "she",
"a young man" -> "an old man"), the counterfactual half of the probe."""
from __future__ import annotations

import re

# Words after which "her" is the object pronoun (-> him) rather than a determiner (-> his), and "his" the
# possessive pronoun (-> hers) rather than a determiner (-> her). Anything else that follows is taken as
# the noun (phrase) the determiner belongs to. A heuristic: "gave her flowers" becomes "gave his flowers".
FUNCTION_WORDS = frozenset("""
a an the this that these those some any no every each all both either neither
to and or but nor so for yet if as than like because since until unless while when whenever where why how
what which who whom whose whether though although
in on at by with from of off up down out over under about into onto upon after before around through
across against along among behind beside besides between beyond during except inside near past toward
towards within without throughout via per
is am are was were be been being do does did have has had will would shall should can could may might must
not never ever just only even also still already again too very quite really back away home here there
now then today tonight tomorrow yesterday once enough anyway well much more most less least alone
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
myself yourself himself herself itself ourselves themselves 's 're 've 'd 'll n't
""".split())


def match_case(source: str, replacement: str) -> str:
    """Give `replacement` the casing of `source`: HIS -> HER, His -> Her, his -> her, Mr -> Mrs,
    African American -> European American."""
    letters = [ch for ch in source if ch.isalpha()]
    if len(letters) > 1 and all(ch.isupper() for ch in letters):
        return replacement.upper()
    if letters and source.lower() != source and source.istitle() and len(source.split()) > 1:
        return " ".join(w[:1].upper() + w[1:] for w in replacement.split(" "))
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _article_for(word: str) -> str:
    w = word.lower()
    vowel_sound = w[:1] in "aeiou" and not w.startswith(("eu", "uni", "use", "usu", "one", "once"))
    return "an" if vowel_sound or w.startswith(("hour", "honest", "heir")) else "a"


class AxisSwapper:
    """Whole-word, case-preserving swaps between the groups of one axis."""

    def __init__(self, axis: str, spec: dict):
        self.axis = axis
        self.groups: list[str] = spec["groups"]
        self.disambiguate: dict = spec.get("disambiguate", {})
        # term (lower) -> (group index, row) from the term's first row; rows are lists aligned with groups
        self.lookup: dict[str, tuple[int, list]] = {}
        for row in spec["terms"]:
            for g, term in enumerate(row):
                if term is not None:
                    self.lookup.setdefault(term.lower(), (g, [None if t is None else t.lower() for t in row]))
        detect = sorted((t for t in self.lookup if t not in set(spec.get("target_only", []))),
                        key=lambda t: (-len(t), t))
        alternation = "|".join(r"\s+".join(re.escape(w) for w in t.split()) for t in detect)
        # An optional preceding article is part of the match, so "a young man" -> "an old man".
        self.pattern = re.compile(rf"(?:(?<![\w-])(?P<art>an?)(?P<sp>\s+))?(?<![\w-])(?P<term>{alternation})(?![\w-])",
                                  re.IGNORECASE) if detect else None

    def groups_in(self, text: str) -> list[int]:
        """Group indices of the terms found in `text`, in order of appearance."""
        if self.pattern is None:
            return []
        return [self.lookup[" ".join(m.group("term").lower().split())][0] for m in self.pattern.finditer(text)]

    def swap(self, text: str, a: int, b: int) -> str:
        """Transpose groups a and b: terms of group a become their group-b counterparts and vice versa;
        terms of other groups, and terms with no counterpart (null), stay as they are."""
        def repl(m: re.Match) -> str:
            found = m.group("term")
            key = " ".join(found.lower().split())
            g, row = self.lookup[key]
            target = b if g == a else a if g == b else None
            new = row[target] if target is not None else None
            if new is not None and key in self.disambiguate:
                new = self._disambiguate(key, m.string, m.end("term"))
            prefix = m.group(0)[: m.start("term") - m.start(0)]
            if new is None:
                return m.group(0)
            new_text = match_case(found, new)
            if m.group("art"):
                art = m.group("art")
                prefix = match_case(art, _article_for(new)) + m.group("sp")
            return prefix + new_text

        return self.pattern.sub(repl, text) if self.pattern is not None else text

    def _disambiguate(self, key: str, text: str, end: int) -> str:
        nxt = re.match(r"\s*([A-Za-z]+(?:'[A-Za-z]+)?|'[A-Za-z]+)", text[end:])
        choice = self.disambiguate[key]
        if nxt is None or nxt.group(1).lower() in FUNCTION_WORDS:
            return choice["otherwise"]
        return choice["before_word"]


def swap_terms(text: str, axis_spec: dict, from_group: str, to_group: str, axis: str = "") -> str:
    """Convenience: the counterfactual of `text` with `from_group` and `to_group` swapped on one axis."""
    sw = AxisSwapper(axis, axis_spec)
    return sw.swap(text, sw.groups.index(from_group), sw.groups.index(to_group))
