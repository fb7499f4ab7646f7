"""The page as a Chinese browser gets it: the Blocks' config with every translatable text read in zh-CN, as the
browser's tables hold it, then what the language event writes on load. No English word may be left but names (of
samplers, formats, files, papers' symbols), and the texts a handler writes are Chinese too."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest
from gradio.i18n import I18nData
from tiny_app import PHOTO, run_all, save_tiny

from ddpm_app.serve.library import ModelLibrary
from ddpm_app.text import catalogue
from ddpm_app.ui import page as ui
from ddpm_app.ui.i18n import I18N, MARKER, NAMESPACE
from ddpm_app.views.state import UserState

CHINESE = "zh-CN"
# names, not words: samplers, methods and measures by their papers' names, formats, the Hub, units, the schedules'
# and the lab's arrows' names (as config.json and the API write them), the weights folder's name, the model, its
# architecture and its data set, the authors a bound is named after (Ho et al.)
NAMES = {"weights", "ddpm", "DDPM", "DDIM", "SDEdit", "SNR", "PSNR", "ELBO", "KL", "Ho", "MLP", "JSON", "CSV", "PNG",
         "GIF", "JPEG", "WebP", "BMP", "TIFF", "README", "Hugging", "Face", "Hub", "ID", "CPU", "bits", "dim", "dB",
         "ms", "linear", "cosine", "score", "eta", "cpu", "English", "PyTorch", "faces", "noise"}
SKIPPED = {"glossary", "model-card"}  # English beside Chinese on purpose; the model's own README, as written
TOKEN = re.compile(r"[A-Za-z0-9_]+")  # a word, or a symbol or name with digits or _ in it (x_t, MP4, fp32)


def zh(value: object) -> object:
    """A config value as the Chinese browser shows it: a translatable text looked up in the zh-CN table."""
    if isinstance(value, I18nData):
        return I18N.translations[CHINESE][value.key]
    if isinstance(value, dict) and value.get("__type__") == "translation_metadata":
        return I18N.translations[CHINESE][value["key"]]
    if isinstance(value, str) and value.startswith(MARKER):
        return I18N.translations[CHINESE][re.search(r'"key": "([^"]+)"', value).group(1)]
    return value


def english_words(text: str, names: set[str] = NAMES) -> set[str]:
    """The Latin words of ``text`` (two letters or more) that are not names, its formulas ($…$), code (`…`), HTML
    tags, paths and ids (runs/my-faces, /toy_train) and file names (README.md) left out."""
    text = re.sub(r"\$\$.*?\$\$|\$.*?\$|`[^`]*`|<[^>]+>", " ", text, flags=re.S)
    text = re.sub(r"[^\s（）()]*/[^\s（）()]*|\b[\w-]+\.[a-z]{2,}\b", " ", text)
    return {w for w in TOKEN.findall(text) if w.isalpha() and len(w) > 1 and w not in names}


def machine_names(served) -> set[str]:
    """The words of this machine's CPU and engine names ("AMD EPYC", "OpenVINO"), which the model table shows."""
    engine = re.sub(r"\(.*\)", "", served.runtime.engine)  # "OpenVINO 2026.4.1 (bf16, built in 2.3 s)": its name
    return NAMES | set(TOKEN.findall(f"{served.runtime.device} {engine}"))


def shown_texts(config: dict) -> list[tuple[str, str, str]]:
    """(component, property, text) for every text the page shows: labels, help lines, placeholders, choices,
    Markdown, HTML, buttons."""
    found = []
    for component in config["components"]:
        props = component.get("props", {})
        name = f"{component['type']}#{props.get('elem_id') or component['id']}"
        if props.get("elem_id") in SKIPPED:
            continue
        for prop in ("label", "info", "placeholder", "value"):
            value = zh(props.get(prop))
            if isinstance(value, str) and (prop != "value" or component["type"] in ("markdown", "html", "button")):
                found.append((name, prop, value))
        for choice in props.get("choices") or []:
            label = zh(choice[0] if isinstance(choice, (list, tuple)) else choice)
            if isinstance(label, str):
                found.append((name, "choice", label))
    return found


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> tuple[gr.Blocks, ui.Handlers]:
    weights = tmp_path_factory.mktemp("weights")
    save_tiny(weights / "faces")
    library = ModelLibrary(weights, "cpu", precision="fp32")
    return ui.build(library), ui.Handlers(library, preview_interval=None, export_dir=weights.parent / "exports")


def test_the_browser_has_every_key_the_page_names(app):
    config = app[0].get_config_file()
    keys = set(re.findall(rf'"key": "({re.escape(NAMESPACE)}[^"]+)"', str(config)))
    keys |= set(re.findall(rf"'key': '({re.escape(NAMESPACE)}[^']+)'", str(config)))
    assert keys and keys <= set(config["i18n_translations"][CHINESE]) <= set(config["i18n_translations"]["en"])


def test_no_english_is_left_in_the_page_a_chinese_browser_gets(app):
    demo, handlers = app
    texts = shown_texts(demo.get_config_file())
    assert len(texts) > 200  # every tab's labels, help and buttons
    names = machine_names(handlers.library.get())
    left = {(name, prop, text[:60]): sorted(english_words(text, names)) for name, prop, text in texts
            if english_words(text, names)}
    assert not left


def test_the_page_s_english_is_what_it_always_was(app):
    """The same config read in English: the texts the tests and the docs quote."""
    english = {I18N.translations["en"][k] for k in I18N.translations["en"]}
    assert {"Generate", "Frames", "Forward", "Denoise", "Seed (−1 or blank = random)", "Clip x̂₀ to [−1, 1]",
            "DDPM (all T steps)", "Export GIF"} <= english


def test_the_language_event_writes_the_model_s_texts_in_chinese(app):
    """On load the page's language reaches the server: the header, Forward's numbers and the model table are
    written again in Chinese, without an English word."""
    _, handlers = app
    user = UserState()
    header, numbers, plot, table, card = handlers.set_language(CHINESE, 5, user)
    assert user.language == CHINESE and plot.ndim == 3
    names = machine_names(handlers.library.get())
    for written in (header, numbers, table):
        assert not english_words(written, names), (written, english_words(written, names))
    assert "噪声调度" in header and "模型" in header


def test_a_chinese_user_s_status_lines_notes_and_errors_are_chinese(app):
    _, handlers = app
    user = UserState(language=CHINESE)
    outs = run_all(handlers.generate("ddim", 3, 0.0, 7, 1, True, False, user))
    status = outs[-1][3]
    assert "完成" in status and not english_words(status), english_words(status)
    label = handlers.frame(3, user)[2]
    assert "第 3 步" in label and not english_words(label), english_words(label)
    noised = handlers.noise(str(PHOTO), 5, True, 3, user)
    assert "噪声种子" in noised[3] and not english_words(noised[-1]), noised[-1]
    with pytest.raises(gr.Error) as refused:
        handlers.frame(99, user)
    assert "必须是" in refused.value.message and "帧" in refused.value.message, refused.value.message
    with pytest.raises(gr.Error) as refused:
        handlers.train_step(None, 3, 0, user)
    assert refused.value.message == catalogue(CHINESE)["error.upload_first"]



def test_a_chinese_user_s_bound_loss_curve_and_model_switch_say_so_in_chinese(app):
    """The texts of slow work (how long it will take, which bound it is) and of a model switch are Chinese too."""
    _, handlers = app
    user = UserState(language=CHINESE)
    outs = list(handlers.likelihood(str(PHOTO), False, 1, False, user))
    written = [out[0] for out in outs] + [outs[0][2], outs[-1][2]]
    assert "Ho 等人" in outs[-1][2] and "未裁剪" in outs[-1][0]
    first, last = list(handlers.loss_curve(str(PHOTO), 3, user))
    header, note = handlers.switching("faces", user)
    for text in [*written, first[1], last[1], header, note]:
        assert not english_words(text), (text, english_words(text))

def test_an_english_user_s_texts_are_as_they_were(app):
    _, handlers = app
    user = UserState()
    outs = run_all(handlers.generate("ddim", 3, 0.0, 7, 1, True, False, user))
    assert "<b>Done</b>: 3 steps in" in outs[-1][3] and "seed 7" in outs[-1][3]
    assert handlers.frame(3, user)[2].startswith("**step 3 of 3 · t = 1** — frame 3/3: DDIM, 3 steps, η = 0, "
                                                 "x̂₀ clipped, seed 7 (finished).")


def test_pictures_a_chinese_user_exports_are_labelled_in_chinese(app, tmp_path: Path):
    """The GIF's header names the step in Chinese (the drawing itself is checked glyph by glyph in
    test_languages.py)."""
    from ddpm_app.views.export import frame_picture

    _, handlers = app
    user = UserState(language=CHINESE)
    run_all(handlers.generate("ddim", 2, 0.0, 7, 1, True, False, user))
    assert user.run.title.startswith("DDIM，2 步")
    picture = frame_picture(user.run, user.run.frames[-1], language=CHINESE)
    assert picture.width > 0


def test_every_event_that_takes_an_upload_knows_its_user(app):
    """An upload is checked before its handler runs (:class:`~ddpm_app.ui.widgets.Refused`): the message reaches the
    user in their language only if the event carries the user too."""
    from ddpm_app.ui.widgets import FileInput, PhotoInput, SketchInput

    demo, _ = app
    uploads = [fn for fn in demo.fns.values()
               if fn.fn is not None and any(isinstance(b, (PhotoInput, FileInput, SketchInput)) for b in fn.inputs)]
    assert len(uploads) > 5
    assert [fn.name for fn in uploads
            if not any(isinstance(b, gr.State) and isinstance(b.value, UserState) for b in fn.inputs)] == []


@pytest.mark.parametrize("folder, config", [
    ("not-an-object", "[]"),
    ("bad-field", '{"format": "ddpm-app", "arch": "ddpm", "model": {}, "schedule": {"timesteps": 1.5}}'),
])
def test_a_bad_model_folder_is_refused_in_the_user_s_language(app, folder, config):
    """A model folder that cannot be read is refused in the language of the user who asked for it: the file's own
    message inside the folder's too, and the app's "the current model stays"."""
    demo, handlers = app
    bad = handlers.library.weights_dir / "nested" / folder
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "config.json").write_text(config)
    said = {}
    for language in ("en", CHINESE):
        with pytest.raises(gr.Error) as refused:
            handlers.load_folder(f"nested/{folder}", UserState(language=language))
        said[language] = refused.value.message
    assert said["en"].startswith(str(bad / "config.json") + ": ") and "current model stays" in said["en"]
    assert said[CHINESE].startswith(str(bad / "config.json") + "：") and "当前" in said[CHINESE]
    assert not english_words(said[CHINESE].replace(str(bad), "")), said[CHINESE]
