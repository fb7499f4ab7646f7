"""The page in the reader's language: the catalogues of :mod:`ddpm_app.text` handed to Gradio, which translates labels,
tab names, buttons and Markdown in the browser; the language switch; and how a handler learns its user's language.

Gradio translates what the page was built with (``i18n(key)`` in place of a string), and what an update sends as
``i18n(key)``, by the browser's language. Texts a handler writes with numbers in them (status lines, notes, plot
titles) it writes itself, in ``user.language``: the page sets that when it loads, from the reader's last choice or
else the browser's language (:data:`DETECT_JS`), and the switch changes it together with Gradio's language
(:data:`SWITCH_JS`); a click on it the browser remembers for the next visit (:data:`REMEMBER_JS`). API clients, and
everything before the page says otherwise, get English.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import gradio as gr
from gradio.i18n import I18nData

from ddpm_app.text import ENGLISH, LANGUAGES, catalogue, text

NAMESPACE = "ddpm."  # our keys beside Gradio's own ("common.…", "image.…", "plot.…") in the browser's tables
# catalogue keys of words Gradio's own page shows (its "common.runs": the footer's "Runs"), under Gradio's key: where
# Gradio's tables lack one in our languages, ours fill the gap
GRADIO = "gradio."
STORAGE_KEY = "ddpm_app.language"  # where the browser remembers the switch
MARKER = "__i18n__"  # how Gradio writes a translatable text as a string



def browser_key(key: str) -> str:
    """The key a catalogue text has in the browser's tables: Gradio's own for its words, ours otherwise."""
    return key.removeprefix(GRADIO) if key.startswith(GRADIO) else NAMESPACE + key


I18N = gr.I18n(**{tag: {browser_key(key): words for key, words in catalogue(tag).items()} for tag in LANGUAGES})


WRITTEN: dict[str, str] = {}  # key of a text written for the page (:func:`written`) → its English


def i18n(key: str, **values: object) -> I18nData:
    """A catalogue text that the browser shows in its language (a label, a tab name, a static Markdown); with
    ``values``, the text filled with them (a label that names the model's T)."""
    if values:
        return written(lambda language: text(key, language, **values))
    catalogue(ENGLISH)[key]  # noqa: B018  (a key the catalogue lacks fails here, not as a raw key on the page)
    return I18N(NAMESPACE + key)


def written(write: Callable[[str], str]) -> I18nData:
    """A text the page is built with that holds values (the first model's numbers, its card's table): written once
    in each language and handed to the browser's tables under a key of its own, so the page shows it in the
    browser's language from the start."""
    texts = {language: write(language) for language in LANGUAGES}
    key = "written." + hashlib.sha1(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:16]
    for language, words in texts.items():
        I18N.translations[language][NAMESPACE + key] = words
    WRITTEN[key] = texts[ENGLISH]
    return I18N(NAMESPACE + key)


def english(value: object) -> object:
    """``value`` with an :func:`i18n` text read in English (for API descriptions and messages); others as they are.
    A component keeps some such texts as the string Gradio makes of them (a button's value)."""
    if isinstance(value, str) and value.startswith(MARKER):
        value = I18nData(json.loads(value.removeprefix(MARKER))["key"])
    if isinstance(value, I18nData):
        key = value.key.removeprefix(NAMESPACE)
        return WRITTEN[key] if key in WRITTEN else text(key)
    return value


def choices(pairs: list[tuple[str, str]]) -> list[tuple[I18nData, str]]:
    """(catalogue key, value) pairs as choices whose names the browser translates."""
    return [(i18n(key), value) for key, value in pairs]


# Gradio's language follows at once: its changeLocale (which its own settings panel uses), from the module the page
# already loaded; and the window's title
TITLES = json.dumps({tag: catalogue(tag)["app.title"] for tag in LANGUAGES}, ensure_ascii=False)
CHANGE_LOCALE = """async (language) => {
    document.title = (""" + TITLES + """)[language] || document.title;
    const core = performance.getEntriesByType("resource").map((entry) => entry.name)
      .find((name) => /\\/assets\\/core-[^/]*\\.js$/.test(name));
    if (core) {
      const gradio = await import(core);
      if (gradio.changeLocale) gradio.changeLocale(language);
    }
  }"""

# On load: the switch shows the language the reader chose last time, which Gradio then takes too; else the one
# Gradio chose from the browser (<html lang>, which Gradio keeps up to date): any Chinese is 简体中文, the only
# Chinese there is, everything else English.
DETECT_JS = f"""async () => {{
  let chosen = null;
  try {{ chosen = localStorage.getItem("{STORAGE_KEY}"); }} catch (e) {{}}
  const browser = (document.documentElement.lang || "").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
  if (chosen && chosen !== browser) await ({CHANGE_LOCALE})(chosen);
  return chosen || browser;
}}"""

# On a change of the switch (a click, or the load's choice): Gradio's language follows.
SWITCH_JS = f"""async (language) => {{
  await ({CHANGE_LOCALE})(language);
  return language;
}}"""

# On a click of the switch: the browser remembers the choice for the next visit.
REMEMBER_JS = f"""(language) => {{
  try {{ localStorage.setItem("{STORAGE_KEY}", language); }} catch (e) {{}}
  return language;
}}"""


def language_switch() -> gr.Radio:
    """The visible switch: each language by its own name."""
    return gr.Radio([(name, tag) for tag, name in LANGUAGES.items()], value=ENGLISH, label=i18n("app.language"),
                    elem_id="language", container=False, scale=0, min_width=200)
