"""The app's two languages: the catalogues agree key for key and field for field, the Chinese one speaks the seed
tutorial's words, and pictures and plots draw Chinese with a font that has it."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from serving import ROOT

from ddpm_app import fonts
from ddpm_app.checks import ConfigError, whole_number
from ddpm_app.io.model_folder import ModelFolderError, read_config
from ddpm_app.text import ENGLISH, LANGUAGES, CatalogueError, catalogue, count, fields, language_of, sentences, text

TUTORIAL = ROOT.parent / "shared" / "seed" / "000_84a41ae4c88c7355.txt"
# the glossary's Chinese words that the tutorial itself uses (the rest, such as 种子 or 噪声调度, it never needs)
TUTORIAL_WORDS = ("加噪过程", "去噪过程", "去噪", "噪声", "纯噪声", "时间步", "重参数化", "均值", "方差", "预测噪声损失",
                  "预测噪声", "图片", "噪声图片", "高斯分布", "KL散度", "马尔可夫过程", "超参数", "采样", "训练", "模型",
                  "网络", "损失", "插值")
# words the tutorial does not use for its ideas, with the word it does use
SYNONYMS = {"图像": "图片", "前向过程": "加噪过程", "正向过程": "加噪过程", "扩散过程": "加噪过程", "反向过程": "去噪过程",
            "逆向过程": "去噪过程", "平均值": "均值", "时间步长": "时间步", "时刻": "时间步", "重参数化技巧": "重参数化",
            "马尔科夫": "马尔可夫"}
# the glossary word may also stand as the tutorial's verb: to noise a photo is 加噪 (加噪过程, 加噪编码)
VERBS = {"噪声": "加噪"}
NOT_PLURAL = {"mean"}  # "it means" is not about means
CHINESE = "zh-CN"


def test_both_catalogues_have_every_key():
    assert set(LANGUAGES) == {ENGLISH, CHINESE}
    assert catalogue(ENGLISH).keys() == catalogue(CHINESE).keys()
    assert all(isinstance(words, str) and words.strip() for tag in LANGUAGES for words in catalogue(tag).values())


def test_both_catalogues_fill_the_same_fields():
    """A text with {name} fields in one language has the same names in the other (the LaTeX braces of a formula
    count too: both languages write the same formulas)."""
    english, chinese = catalogue(ENGLISH), catalogue(CHINESE)
    differ = {key: (fields(english[key]), fields(chinese[key])) for key in english
              if fields(english[key]) != fields(chinese[key])}
    assert not differ


def test_a_text_is_looked_up_by_key_and_filled_with_values():
    assert text("tab.forward") == "Forward" and text("tab.forward", CHINESE) == "加噪过程"
    assert text("model.loaded", CHINESE, name="faces") == "已加载 **faces**。"
    assert text("run.no_run", ENGLISH, kind="generate", button="Generate") == \
        "No generate run yet: press **Generate** first."
    assert text("generate.help") == catalogue(ENGLISH)["generate.help"]  # no values: LaTeX braces as written
    with pytest.raises(KeyError):
        text("no.such.key")


def test_a_check_names_its_text_which_reads_in_either_language():
    """A check raises a catalogue key and its values: English as ``str`` (the API's language), Chinese where the user
    reads it, the field's name in Chinese words too; a copy (a pickle) keeps the values."""
    with pytest.raises(ValueError) as raised:
        whole_number(99, "frame", 1, 6)
    assert str(raised.value) == "frame must be a whole number in 1…6, got 99"
    assert raised.value.in_language(CHINESE) == "帧 必须是 1…6 之间的整数，收到的是 99"
    assert raised.value.in_language(ENGLISH) == str(raised.value)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert type(copy) is type(raised.value) and copy.in_language(CHINESE) == raised.value.in_language(CHINESE)


def test_a_message_inside_a_message_is_read_in_the_same_language():
    """A model folder's message holds its file's message, and the weights' differences a list: all in one language."""
    with pytest.raises(ModelFolderError) as raised:
        read_config(Path(__file__).parent)  # no config.json here
    assert str(raised.value).endswith("config.json: not found. A model folder needs config.json and model.safetensors.")
    assert raised.value.in_language(CHINESE).endswith("config.json：找不到。模型文件夹需要 config.json 和 model.safetensors。")
    nested = ModelFolderError("folder.in_file", path="m/config.json",
                              detail=ConfigError("config.in_part", part="schedule",
                                                 detail=ConfigError("error.flag", name="clip", got="3")))
    assert str(nested) == "m/config.json: schedule.clip must be true or false, got 3"
    assert nested.in_language(CHINESE) == "m/config.json：schedule.clip 必须是 true 或 false，收到的是 3"
    differ = ModelFolderError("folder.weights_differ", path="w", config="c",
                              detail=[CatalogueError("folder.tensor_missing", name="a"), "…"])
    assert str(differ) == "w: weights do not match c (a missing; …)"
    assert differ.in_language(CHINESE) == "w：权重与 c 不符（缺少 a; …）"


def test_counts_and_sentences_follow_the_language():
    assert [count("step", n) for n in (1, 5)] == ["1 step", "5 steps"] and count("step", 5, CHINESE) == "5 步"
    assert sentences("One.", "Two.") == "One. Two." and sentences("一。", "二。") == "一。二。"


@pytest.mark.parametrize("tag, language", [("zh-CN", "zh-CN"), ("zh", "zh-CN"), ("zh-Hans-SG", "zh-CN"),
                                           ("zh-TW", "zh-CN"), ("ZH-cn", "zh-CN"), ("en-GB", "en"), ("de", "en"),
                                           ("", "en"), (None, "en"), ("zhx", "en")])
def test_a_browser_language_picks_a_catalogue(tag, language):
    assert language_of(tag) == language


def test_the_glossary_holds_the_tutorials_words():
    glossary = {key: words for key, words in catalogue(CHINESE).items() if key.startswith("term.")}
    assert set(TUTORIAL_WORDS) <= set(glossary.values())
    assert glossary["term.forward_process"] == "加噪过程" and glossary["term.noise_loss"] == "预测噪声损失"
    if TUTORIAL.is_file():  # the seed tutorial beside the repository
        tutorial = TUTORIAL.read_text(encoding="utf-8")
        assert [w for w in TUTORIAL_WORDS if w not in tutorial] == []


def test_every_chinese_text_uses_the_glossarys_words():
    """Where an English text names a glossary idea (its words, not its {fields}), its Chinese text uses the glossary's
    word for it."""
    english, chinese = catalogue(ENGLISH), catalogue(CHINESE)
    terms = [(english[k], chinese[k]) for k in english if k.startswith("term.")]

    def names(en_word: str, words: str) -> bool:
        plural = "" if en_word in NOT_PLURAL else "(?:s|es)?"
        return re.search(rf"\b{re.escape(en_word)}{plural}\b", re.sub(r"\{\w+\}", "", words), re.IGNORECASE) is not None

    missing = [(key, en_word, zh_word) for key in english if not key.startswith("term.")
               for en_word, zh_word in terms
               if names(en_word, english[key]) and zh_word not in chinese[key]
               and VERBS.get(zh_word, zh_word) not in chinese[key]]
    assert not missing


def test_no_chinese_text_uses_a_word_the_tutorial_does_not():
    found = {(key, word): SYNONYMS[word] for key, words in catalogue(CHINESE).items() for word in SYNONYMS
             if word in words}
    assert not found


# -- fonts ---------------------------------------------------------------------------------------------------


def test_text_is_cut_into_runs_of_chinese_and_the_rest():
    assert fonts.runs("x_t 在 t = 5，x̂₀") == [("x_t ", False), ("在", True), (" t = 5", False), ("，", True),
                                             ("x̂₀", False)]
    assert fonts.runs("predicted x̂₀") == [("predicted x̂₀", False)]


def glyph_missing(font, character: str) -> bool:
    from fontTools.ttLib import TTFont

    with TTFont(font.path, fontNumber=getattr(font, "index", 0) or 0) as face:
        return ord(character) not in face.getBestCmap()


def test_each_run_is_drawn_in_a_font_that_has_its_characters(monkeypatch):
    drawn = []
    original = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, part, *a, **kw: drawn.append((part, kw["font"])) or original(self, xy, part,
                                                                                                     *a, **kw))
    image = Image.new("RGB", (400, 40), "white")
    fonts.draw_text(ImageDraw.Draw(image), (4, 4), "预测的 x̂₀，t = 5 时的 ε̂", 16)
    assert "".join(part for part, _ in drawn) == "预测的 x̂₀，t = 5 时的 ε̂"
    for part, font in drawn:
        assert not [c for c in part if not c.isspace() and glyph_missing(font, c)], part
    assert np.asarray(image).min() < 128  # ink


def test_chinese_labels_are_drawn_as_glyphs_not_boxes():
    """Pillow draws a character its font lacks as the .notdef box: 加 must look different from it."""
    from ddpm_app.pictures import labelled_strip

    strip = labelled_strip([torch.zeros(3, 16, 16)], ["加"], min_size=128)
    notdef = labelled_strip([torch.zeros(3, 16, 16)], ["\uffff"], min_size=128)
    assert not np.array_equal(strip, notdef)
    cjk = fonts.pillow_font(20, cjk=True)
    assert np.asarray(cjk.getmask("加")).any() and not glyph_missing(cjk, "加")


def test_english_labels_are_drawn_exactly_as_before():
    """Without Chinese, a label is one DejaVu Sans text, as when there was one font."""
    from ddpm_app.pictures import label_font

    ours = Image.new("RGB", (300, 30), "white")
    fonts.draw_text(ImageDraw.Draw(ours), (150, 2), "predicted x̂₀ (×½)", 18, centred=True)
    before = Image.new("RGB", (300, 30), "white")
    ImageDraw.Draw(before).text((150, 2), "predicted x̂₀ (×½)", fill="black", font=label_font(18), anchor="ma")
    assert np.array_equal(np.asarray(ours), np.asarray(before))


@pytest.mark.parametrize("title", ["每步：$L_{t-1} = \\mathrm{KL}(q\\,\\|\\,p_\\theta)$", "预测的 x̂₀，时间步 t"])
def test_plots_draw_chinese_without_missing_glyphs(title):
    """Chinese alone, beside DejaVu's symbols, and beside $…$ math: every glyph found (matplotlib warns of each
    glyph it cannot find, and draws a box)."""
    from ddpm_app.views.plots import new_figure, pixels

    fig = new_figure(5, 2)
    ax = fig.subplots()
    ax.set_title(title)
    ax.plot([0, 1], [0, 1], label=title)
    ax.legend()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(missing from font|does not have a glyph).*")
        image = pixels(fig)
    assert image.ndim == 3 and image.shape[2] == 3
