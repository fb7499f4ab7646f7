"""Every word the app shows, in each language it speaks: one catalogue per language (``locales/<tag>.json``, a flat
key → text table), looked up by key with format values.

The catalogues hold the words; code holds only keys, numbers and mathematical symbols, so a text is written once per
language. Keys starting with ``term.`` are the glossary: the tutorial's own words for its ideas (加噪过程, 时间步, 预测噪声
损失, …), which every other text uses. English is the fallback: the language of API clients, of tests and of anything
that names no language. The UI passes the same tables to Gradio (:mod:`ddpm_app.ui.i18n`) for labels the browser
translates by itself; this module needs no Gradio, so the views can draw plot titles in the user's language too.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from string import Formatter

LOCALES = Path(__file__).parent / "locales"
ENGLISH = "en"
LANGUAGES = {"en": "English", "zh-CN": "简体中文"}  # tag → the language's own name, as the switch shows it


@lru_cache(maxsize=None)
def catalogue(language: str) -> dict[str, str]:
    """The key → text table of ``language`` (a tag of :data:`LANGUAGES`)."""
    if language not in LANGUAGES:
        raise KeyError(f"no catalogue for language {language!r}; there are {', '.join(LANGUAGES)}")
    with open(LOCALES / f"{language}.json", encoding="utf-8") as f:
        return json.load(f)


def language_of(tag: str | None) -> str:
    """The catalogue a browser's language tag gets: any Chinese (zh, zh-CN, zh-Hans-SG, …) gets 简体中文, as the
    only Chinese there is; every other tag, and none, gets English."""
    if tag in LANGUAGES:
        return tag
    return "zh-CN" if re.match(r"zh\b", tag or "", re.IGNORECASE) else ENGLISH


def text(key: str, language: str = ENGLISH, /, **values: object) -> str:
    """The text of ``key`` in ``language``, its ``{name}`` fields filled from ``values``.

    Without values the text comes back as written (Markdown with LaTeX braces needs no escaping); a key missing
    from ``language`` comes from English, and a key missing there too is a mistake in the code (KeyError)."""
    template = catalogue(language_of(language)).get(key)
    if template is None:
        template = catalogue(ENGLISH)[key]
    return template.format(**values) if values else template


class CatalogueError(Exception):
    """An error whose message is a catalogue text: raised with its key and values, read in English as ``str(e)`` (the
    language of API clients, logs and tests) and in a user's language with :meth:`in_language` wherever that is known.
    A value that is itself such a text (a file's message inside a model folder's) is read in the same language,
    and the ``name`` of the field a check names in that language's words (``field.<name>``)."""

    def __init__(self, key: str, /, **values: object):
        catalogue(ENGLISH)[key]  # noqa: B018  (a key the catalogue lacks fails where it is raised)
        super().__init__(key)
        self.key, self.values = key, values

    def __str__(self) -> str:
        return self.in_language(ENGLISH)

    def __reduce__(self):  # a copy keeps the values too (Exception's own copies only the key)
        return _rebuilt, (type(self), self.key, self.values)

    def in_language(self, language: str) -> str:
        values = {name: _in(value, language) for name, value in self.values.items()}
        if isinstance(values.get("name"), str):  # the field a check names
            values["name"] = catalogue(language_of(language)).get(f"field.{values['name']}", values["name"])
        return text(self.key, language, **values)


def _in(value: object, language: str) -> object:
    """A message's value in ``language``: a catalogue error read in it, a list (the differences found) joined with
    semicolons; anything else as it is."""
    if isinstance(value, CatalogueError):
        return value.in_language(language)
    if isinstance(value, list):
        return "; ".join(str(_in(part, language)) for part in value)
    return value


def _rebuilt(cls: type, key: str, values: dict) -> CatalogueError:
    return cls(key, **values)


@lru_cache(maxsize=1)
def _english_patterns() -> list[tuple[re.Pattern, str]]:
    """Each English text with fields as a pattern that reads its values back, longest first (the most specific wins)."""
    patterns = []
    for key, template in sorted(catalogue(ENGLISH).items(), key=lambda item: -len(item[1])):
        try:
            parts = list(Formatter().parse(template))
        except ValueError:  # a lone LaTeX brace: a text no message is written from
            continue
        if any(name is not None and not name.isidentifier() for _, name, _, _ in parts):
            continue  # LaTeX braces ({\bar\alpha_t}): a help text, shown as written
        seen: set[str] = set()
        pattern = ""
        for literal, name, _, _ in parts:
            pattern += re.escape(literal)
            if name is not None:
                pattern += f"(?P={name})" if name in seen else f"(?P<{name}>.+?)"
                seen.add(name)
        if seen or "{" not in template:
            patterns.append((re.compile(pattern, re.S), key))
    return patterns


def translated(message: str, language: str) -> str:
    """An English note a lower layer wrote as text (how the network runs here, a data set's name) in ``language``:
    read back against the catalogue's English texts and written with the matching text of ``language``, each value
    carried over, and a value that is a field's name (``field.<name>``) in that language's words. A note no text
    matches stays as it is. Errors need none of this: they carry their key (:class:`CatalogueError`)."""
    if language_of(language) == ENGLISH:
        return message
    names = catalogue(language_of(language))
    for pattern, key in _english_patterns():
        found = pattern.fullmatch(message)
        if found:
            values = {name: names.get(f"field.{value}", value) for name, value in found.groupdict().items()}
            return text(key, language, **values) if values else text(key, language)
    return message


def sentences(*texts: str) -> str:
    """Texts as one paragraph: a space after each, but none after a full-width sign (Chinese sets no spaces)."""
    joined = ""
    for words in texts:
        words = words.strip()
        joined += ("" if not joined or "\u3000" <= joined[-1] <= "\u303f" or "\uff00" <= joined[-1] <= "\uffef"
                   else " ") + words
    return joined


def count(noun: str, n: int, language: str = ENGLISH) -> str:
    """``n`` and the noun, as the language counts: "1 step", "5 steps", "5 步" (keys ``count.<noun>.one``/``.other``,
    the plural forms of CLDR: Chinese has only the one, written twice)."""
    return text(f"count.{noun}.{'one' if n == 1 else 'other'}", language, n=n)


def fields(template: str) -> set[str]:
    """The names a template's ``{name}`` fields take from the format values (LaTeX braces count as fields too, so
    both languages must write the same formulas)."""
    try:
        return {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError:  # a lone brace: LaTeX such as \{ … \}
        return set(re.findall(r"\{(\w+)[^{}]*\}", template))
