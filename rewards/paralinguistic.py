"""Paralinguistic accuracy: does the answer describe the speaker and the scene the way the gold labels do?

Step-Audio 2's StepEval-Audio-Paralinguistic asks for 11 dimensions of a clip: gender, age, timbre,
scenario, event, emotion, pitch, rhythm, speed, style and vocal (laughter, crying, coughing...).
``VOCABULARY`` holds them (plus ``volume``) as data: per dimension, canonical labels with English and
Chinese synonyms, and *cue* words that name the dimension itself ("pitch", "音调", "语速"). A label's
own name is one of its synonyms. ``age``, ``pitch``, ``speed`` and ``volume`` are ordered (labels
listed low to high) and earn partial credit; ``rhythm`` is not: its labels (steady, halting,
hurried...) are kinds of pattern, not points on a scale.

How an answer is read (``find_labels``, ``parse_attributes``):

* NFKC, lower case; punctuation ``, . ; ! ? 。 、`` and line breaks end a clause, other punctuation
  (hyphens included: "high-pitched" = "high pitched") is a space; "n't" reads "not".
* One scan with every synonym of every dimension, longest first, so 中高音 beats 高音 beats 高 and
  高兴 (happy) is never 高 (high). English synonyms match whole words only ("male" is not in
  "female", "sad" not in "saddle"); Chinese ones match anywhere.
* Ages in numbers map to the age labels through ``AGE_BUCKETS``: "25 years old", "a 40-year-old",
  "30s", "25y", "三十多岁", "20多岁" ("多/来/几" after a round number adds 5: 三十多岁 reads 35).
* A synonym listed under several dimensions (high, low, medium, normal, 高, 低, 中等, 正常...)
  counts for the dimension whose cue word is nearest in the same clause ("音调中等，语速中等",
  "medium pace, high pitch"); with no such cue it counts only if just one of its dimensions is
  being read (the reward reads a row's gold dimensions only: "High." answers a pitch question).
* Negation, minimal: a mention is dropped when "not, no, never, without, nor, neither, hardly" is
  among the three words before it, or 不/没/无/非/未/别 among the three characters before it
  (非常, 不仅, 不但, 不过, 无论 excepted), with no other vocabulary word in between; a list joined
  by or/nor/and/或/和 after a negated mention is negated too ("no laughter or crying").
  Set phrases such as 不快不慢, 不高不低, "neither fast nor slow", 不开心 are synonyms themselves.
  Not handled: negation farther away ("I would not say she sounds angry") or double negation.

Several different labels of one dimension in an answer: ``parse_attributes`` gives None (a hedge
such as "male or female" is no answer); the reward splits the credit among them (see
``paralinguistic_accuracy``), so hedging never earns more than committing to the best guess.

Extending: ``vocabulary=`` (a dict, or a JSON/YAML file of one) adds synonyms, labels or whole
dimensions, e.g. ``{"emotion": {"labels": {"bored": ["无聊", "uninterested"]}},
"accent": {"cues": ["accent", "口音"], "labels": {"british": ["英式"], "american": ["美式"]}}}``.
A new level of an ordered dimension needs the whole dimension with ``"replace": true``.

In a recipe (a relative vocabulary path is read from the working directory)::

    rewards:
      - name: paralinguistic_accuracy
        kwargs: {dimensions: [gender, age, pitch, speed], ordinal_credit: linear, tolerance: 2,
                 vocabulary: my_labels.yaml, unknown_gold: skip}

>>> parse_attributes("A young woman speaks happily with a high-pitched voice, fast.")
{'age': 'young adult', 'gender': 'female', 'emotion': 'happy', 'pitch': 'high', 'speed': 'fast'}
>>> parse_attributes("女性，青年，情绪开心，音调中高，语速快，没有笑声")
{'gender': 'female', 'age': 'young adult', 'emotion': 'happy', 'pitch': 'mid-high', 'speed': 'fast'}
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiorl.common.errors import ConfigError, DataError, nearest
from audiorl.rewards.registry import reward
from audiorl.rewards.text import answer_span, as_text, has_cjk

REWARD = "paralinguistic_accuracy"

# Synonyms are comma-separated here for compactness; users may give lists. Ordered labels: low to high.
# Level words shared by pitch, speed and volume (high, medium, 中等...) are resolved by cues (see above).
_SHARED_MID = "medium, moderate, normal, average, 中等, 适中, 正常"
# fmt: off
VOCABULARY: dict[str, dict[str, Any]] = {
    "gender": {"cues": "gender, sex, 性别", "labels": {
        "male": "man, men, boy, boys, guy, gentleman, masculine, 男, 男性, 男声, 男生, 男人, 男孩, 男士, 男子",
        "female": "woman, women, girl, girls, lady, feminine, 女, 女性, 女声, 女生, 女人, 女孩, 女士, 女子",
    }},
    "age": {"ordered": True, "cues": "age, 年龄, 年纪, 岁数", "labels": {
        "child": "children, kid, kids, toddler, childlike, 儿童, 小孩, 孩子, 童声, 幼儿, 小朋友",
        "teenager": "teen, teens, teenage, adolescent, 少年, 青少年",
        "young adult": "young, youthful, twenties, thirties, 青年, 年轻, 年轻人",
        "middle-aged": "middle age, forties, fifties, 中年, 中年人",
        "elderly": "old, senior, sixties, seventies, eighties, 老年, 老人, 老年人, 年长, 年迈, 老者",
    }},
    "timbre": {"cues": "timbre, voice quality, tone colour, tone color, 音色, 嗓音, 音质, 声线", "labels": {
        "bright": "clear, crisp, 明亮, 清脆, 清亮, 清澈, 清晰",
        "rich": "mellow, resonant, 浑厚, 醇厚, 饱满, 圆润",
        "husky": "hoarse, raspy, gravelly, rough, croaky, 沙哑, 嘶哑, 粗糙, 粗犷, 烟嗓",
        "breathy": "airy, 气声, 气息感",
        "soft": "gentle, 柔和, 温柔, 轻柔, 柔美",
        "nasal": "鼻音",
        "sweet": "甜美, 甜",
        "thin": "纤细, 单薄",
        "magnetic": "磁性",
        "sharp": "piercing, harsh, shrill, 刺耳, 尖利, 尖锐",
        "warm": "温暖, 温润",
    }},
    "scenario": {"cues": "scenario, scene, environment, setting, location, background, place, 场景, 环境, 背景, 地点, 场所", "labels": {
        "indoor": "indoors, inside, in a room, 室内, 屋内, 屋里, 房间",
        "outdoor": "outdoors, outside, open air, 户外, 室外, 野外",
        "restaurant": "cafe, café, canteen, diner, cafeteria, 餐厅, 饭店, 餐馆, 咖啡厅, 咖啡馆, 食堂",
        "kitchen": "厨房",
        "park": "公园",
        "subway": "metro, underground, subway station, 地铁, 地铁站",
        "street": "road, roadside, 街道, 马路, 街头, 路边, 街上",
        "office": "workplace, 办公室",
        "home": "living room, bedroom, 家里, 家中, 客厅, 卧室",
        "vehicle": "in a car, inside a car, bus, train, 车内, 车上, 公交车, 火车",
        "classroom": "school, lecture hall, 教室, 学校, 课堂",
        "shopping mall": "mall, supermarket, market, store, shop, 商场, 超市, 市场, 商店",
        "station": "airport, railway station, train station, 车站, 火车站, 机场",
        "nature": "forest, woods, countryside, beach, seaside, 森林, 树林, 乡村, 海边, 沙滩",
    }},
    "event": {"cues": "event, events, sound event, sound events, 事件, 声音事件, 音效", "labels": {
        "music": "song, melody, piano, guitar, instrumental, 音乐, 歌曲, 旋律, 钢琴, 吉他, 乐器",
        "dog barking": "dog, dogs, bark, barks, barking, 狗, 狗叫, 犬吠",
        "cat meowing": "cat, cats, meow, meowing, 猫, 猫叫",
        "birdsong": "bird, birds, chirp, chirping, tweeting, 鸟, 鸟叫, 鸟鸣",
        "car horn": "horn, honk, honking, 喇叭, 鸣笛",
        "siren": "sirens, ambulance, 警笛, 警报, 救护车",
        "alarm": "alarm clock, beeping, 闹钟",
        "traffic": "engine, motor, car, cars, motorcycle, 发动机, 引擎, 汽车, 车流, 交通",
        "rain": "raining, rainfall, 雨, 雨声, 下雨",
        "wind": "windy, 风声, 刮风, 大风",
        "thunder": "thunderstorm, 雷, 雷声, 打雷",
        "water": "stream, waves, ocean, river, flowing water, 水声, 流水, 海浪, 水流",
        "applause": "clapping, clap, 掌声, 鼓掌",
        "footsteps": "footstep, 脚步, 脚步声",
        "door": "door slam, knock, knocking, 敲门, 开门, 关门, 门铃",
        "phone ringing": "phone, telephone, ringtone, ringing, 电话, 电话铃, 手机铃声, 铃声",
        "crowd": "chatter, people talking, murmur, crowd noise, 人群, 嘈杂, 喧哗",
        "typing": "keyboard, 键盘, 打字",
        "bell": "bells, chime, 钟声, 铃铛",
        "gunshot": "gunfire, gun, explosion, 枪声, 爆炸",
        "glass breaking": "broken glass, breaking glass, shattering, 玻璃碎, 玻璃破碎",
    }},
    "emotion": {"cues": "emotion, emotional, emotions, mood, feeling, feelings, 情绪, 情感, 心情, 感情", "labels": {
        "happy": "happily, happiness, joy, joyful, joyfully, cheerful, cheerfully, glad, delighted, pleased, excited, "
                 "excitedly, excitement, enthusiastic, 开心, 高兴, 快乐, 愉快, 欢快, 喜悦, 欣喜, 愉悦, 兴奋, 激动",
        "sad": "sadly, sadness, sorrowful, sorrow, unhappy, melancholy, melancholic, depressed, gloomy, grief, "
               "悲伤, 难过, 伤心, 沮丧, 悲痛, 忧伤, 低落, 失落, 哀伤, 不开心, 不高兴",
        "angry": "angrily, anger, furious, annoyed, irritated, rage, 生气, 愤怒, 恼火, 气愤, 暴躁, 不满",
        "fearful": "fear, afraid, scared, frightened, terrified, 害怕, 恐惧, 惊恐",
        "anxious": "nervous, worried, tense, uneasy, 紧张, 焦虑, 担心, 不安",
        "surprised": "surprise, astonished, amazed, shocked, 惊讶, 吃惊, 惊奇, 震惊",
        "disgusted": "disgust, 厌恶, 恶心, 反感, 嫌弃",
        "neutral": "calm, calmly, emotionless, unemotional, 平静, 平淡, 冷静, 淡定, 无明显情绪, 没有明显情绪",
        "sarcastic": "sarcasm, ironic, mocking, 讽刺, 嘲讽, 讥讽, 阴阳怪气",
    }},
    "pitch": {"ordered": True, "cues": "pitch, pitched, 音调, 音高, 声调, 调子, 音域", "labels": {
        "low": "low pitched, low pitch, deep, bass, 低, 低音, 低沉, 深沉",
        "mid-low": "medium low, somewhat low, slightly low, fairly low, rather low, a bit low, relatively low, "
                   "中低, 中低音, 偏低, 较低, 稍低, 略低, 中音偏低, 中等偏低",
        "mid": f"mid range, midrange, 中音, neither high nor low, 不高不低, {_SHARED_MID}",
        "mid-high": "medium high, somewhat high, slightly high, fairly high, rather high, a bit high, relatively high, "
                    "中高, 中高音, 偏高, 较高, 稍高, 略高, 中音偏高, 中等偏高",
        "high": "high pitched, high pitch, 高, 高音, 高亢, 尖, 尖细",
    }},
    "rhythm": {"cues": "rhythm, rhythmic, cadence, prosody, 节奏, 韵律, 节律", "labels": {
        "steady": "even paced, regular, stable, consistent, 平稳, 稳定, 均匀, 匀速, 平缓",
        "fluent": "fluid, flowing, smooth, smoothly, 流畅, 顺畅, 连贯",
        "halting": "hesitant, choppy, stuttering, stammering, broken, pauses, pausing, "
                   "断断续续, 停顿, 卡顿, 结巴, 犹豫, 不连贯, 不流畅",
        "hurried": "rushed, urgent, hasty, 急促, 仓促, 紧凑",
        "expressive": "varied, lively, dynamic, lilting, sing song, ups and downs, 抑扬顿挫, 起伏, 跌宕起伏, 生动, 富有变化",
        "relaxed": "leisurely, unhurried, 舒缓, 从容, 悠闲, 慢条斯理",
        "monotone": "monotonous, flat, 单调, 呆板, 平铺直叙",
    }},
    "speed": {"ordered": True, "cues": "speed, pace, rate, tempo, speaking rate, speech rate, 语速, 速度, 速率", "labels": {
        "slow": "slowly, sluggish, 慢, 缓慢, 慢速, 很慢",
        "medium-slow": "medium slow, moderately slow, somewhat slow, slightly slow, a bit slow, a little slow, fairly slow, "
                       "rather slow, relatively slow, 中慢, 中慢速, 偏慢, 较慢, 稍慢, 略慢, 比较慢, 有点慢, 中速偏慢, 中等偏慢",
        "medium": f"中速, 不快不慢, 不急不慢, 不急不缓, neither fast nor slow, {_SHARED_MID}",
        "medium-fast": "medium fast, moderately fast, somewhat fast, slightly fast, a bit fast, a little fast, fairly fast, "
                       "rather fast, relatively fast, fairly quick, 中快, 中快速, 偏快, 较快, 稍快, 略快, 比较快, 有点快, "
                       "中速偏快, 中等偏快",
        "fast": "quick, quickly, rapid, rapidly, brisk, 快, 快速, 很快, 飞快, 急速",
    }},
    "style": {"cues": "style, speaking style, manner, delivery, 风格, 说话风格, 方式, 语气, 口吻", "labels": {
        "conversational": "casual, chatty, informal, chatting, everyday conversation, 聊天, 口语化, 随意, 日常对话, 闲聊, 对话",
        "broadcast": "formal, news, newsreader, announcer, anchor, broadcasting, 播音, 播音腔, 新闻, 正式, 主持",
        "narration": "narrating, narrative, reading aloud, storytelling, audiobook, recitation, reciting, "
                     "朗读, 朗诵, 讲故事, 旁白, 叙述",
        "public speaking": "lecture, oratory, presentation, 演讲, 讲座, 讲课, 宣讲",
        "whisper": "whispering, whispered, whispers, 耳语, 低语, 悄悄话, 轻声细语",
        "singing": "sing, sings, sung, 唱歌, 歌唱, 演唱",
        "dramatic": "theatrical, exaggerated, acting, 戏剧, 戏剧化, 夸张, 表演",
        "cute": "coquettish, babyish, 撒娇, 嗲, 卖萌",
        "serious": "stern, authoritative, 严肃, 严厉, 威严",
        "humorous": "playful, joking, 幽默, 调侃, 俏皮, 开玩笑",
    }},
    "vocal": {"cues": "vocal, vocalization, vocalisation, vocal sound, non verbal, nonverbal, 非语言, 发声, 人声", "labels": {
        "laughter": "laugh, laughs, laughed, laughing, chuckle, chuckling, giggle, giggling, 笑, 笑声, 大笑",
        "crying": "cry, cries, cried, sob, sobbed, sobbing, weeping, 哭, 哭声, 哭泣, 抽泣",
        "cough": "coughs, coughed, coughing, 咳嗽, 咳",
        "sigh": "sighs, sighed, sighing, 叹气, 叹息",
        "sneeze": "sneezes, sneezed, sneezing, 打喷嚏, 喷嚏",
        "sniff": "sniffs, sniffed, sniffing, sniffle, sniffling, 吸鼻子, 抽鼻子",
        "throat clearing": "clearing throat, clears throat, clear throat, throat, 清嗓子, 清嗓, 清喉咙",
        "scream": "screams, screamed, screaming, shout, shouted, shouting, yell, yelling, 尖叫, 喊叫, 大喊",
        "breathing": "breath, breaths, gasp, gasping, panting, 喘气, 呼吸声, 喘息",
        "yawn": "yawns, yawned, yawning, 哈欠, 打哈欠",
    }},
    "volume": {"ordered": True, "cues": "volume, loudness, 音量, 响度, 声量", "labels": {
        "quiet": "quietly, softly, low volume, hushed, low, 低, 小声, 轻声, 低声, 音量小, 声音小, 很轻",
        "normal": _SHARED_MID,
        "loud": "loudly, high volume, booming, high, 高, 大声, 响亮, 音量大, 声音大, 高声, 洪亮",
    }},
}
# fmt: on

#: Ages in years -> age label: the first bucket whose upper bound (exclusive) is above the age.
AGE_BUCKETS = ((13, "child"), (18, "teenager"), (40, "young adult"), (60, "middle-aged"), (math.inf, "elderly"))

ORDINAL_CREDIT = ("linear", "none")
UNKNOWN_GOLD = ("error", "skip")
_SPEC_KEYS = {"labels", "cues", "ordered", "replace"}
_CLAUSE_BREAKS = set(",.;!?。、\n\r|")
_NEGATORS_EN = {"not", "no", "never", "without", "nor", "neither", "hardly"}
_NEGATORS_ZH = set("不没无非未别")
_NOT_NEGATING_ZH = ("非常", "不仅", "不但", "不过", "无论")
_LIST_JOINERS = {"or", "nor", "and", "或", "或者", "和", "及"}
_CN_DIGITS = dict(zip("一二两三四五六七八九", (1, 2, 2, 3, 4, 5, 6, 7, 8, 9), strict=True))
_AGE_RE = (
    r"(?<![0-9])(?P<decade>[1-9]0) ?s(?![a-z])"
    r"|(?<![0-9])(?P<years>[0-9]{1,3}) ?(?P<approx>多|来|几)? ?(?:周?岁|years? old|years? of age|yrs? old|yo|y)(?![a-z])"
    r"|(?P<cn>[一二两三四五六七八九十]{1,3})(?P<cn_approx>多|来|几)?周?岁"
)


def _prep(text: str) -> str:
    """Lower-cased NFKC text; clause-ending punctuation becomes a line break, other punctuation a space."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"n['’]t(?![a-z])", " not", text)
    chars = []
    for ch in text:
        if ch in _CLAUSE_BREAKS:
            chars.append("\n")
        elif ch.isspace() or unicodedata.category(ch)[0] in "PSC":
            chars.append(" ")
        else:
            chars.append(ch)
    return re.sub(r" +", " ", "".join(chars))


def _negated(gap: str) -> bool:
    if any(w in _NEGATORS_EN for w in gap.split()[-3:]):
        return True
    zh = gap.replace(" ", "")
    for phrase in _NOT_NEGATING_ZH:
        zh = zh.replace(phrase, "")
    return any(ch in _NEGATORS_ZH for ch in zh[-3:])


def _cn_number(s: str) -> int | None:
    if "十" not in s:
        return _CN_DIGITS.get(s)
    tens, _, ones = s.partition("十")
    if len(tens) > 1 or len(ones) > 1:
        return None
    t = _CN_DIGITS.get(tens) if tens else 1
    o = _CN_DIGITS.get(ones) if ones else 0
    return None if t is None or o is None else 10 * t + o


def age_label(years: float) -> str:
    """The age label of an age in years (``AGE_BUCKETS``).

    >>> age_label(8), age_label(25), age_label(45), age_label(70)
    ('child', 'young adult', 'middle-aged', 'elderly')
    """
    return next(label for bound, label in AGE_BUCKETS if years < bound)


def _years(m: re.Match) -> float | None:
    if m.group("decade"):
        return int(m.group("decade")) + 5
    if m.group("years"):
        n, approx = int(m.group("years")), m.group("approx")
    else:
        n, approx = _cn_number(m.group("cn")), m.group("cn_approx")
        if n is None:
            return None
    return n + 5 if approx and n % 10 == 0 else n  # 三十多岁: thirty-something


# ------------------------------------------------------------------ the vocabulary
def _trie(forms: list[str], tail: str) -> str:
    """A regex matching any of ``forms``, longest first, shaped as a trie: a position is tried against
    the distinct first characters, not against every form (a flat alternation was ~30x slower)."""
    root: dict = {}
    for form in forms:
        node = root
        for ch in form:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict) -> str:
        branches = [re.escape(ch) + pattern(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:
            branches.append(tail)  # the form may end here: tried after the longer ones
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return pattern(root) if forms else "(?!)"


@dataclass(frozen=True)
class Dimension:
    name: str
    ordered: bool
    labels: tuple[str, ...]

    def rank(self, label: str) -> int:
        return self.labels.index(label)


def _words(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [w.strip() for w in value.split(",") if w.strip()]
    if isinstance(value, Sequence) and all(isinstance(w, str) for w in value):
        return [w.strip() for w in value if w.strip()]
    raise ConfigError(f"{where} must be a list of strings (or one comma-separated string), got {value!r}")


def _table(raw: Mapping, src: str, base: dict | None = None) -> dict[str, dict]:
    """``raw`` (VOCABULARY's shape) checked and merged onto ``base``: {dim: {ordered, cues, labels: {label: [synonyms]}}}."""
    out = {
        d: {"ordered": s["ordered"], "cues": list(s["cues"]), "labels": {k: list(v) for k, v in s["labels"].items()}}
        for d, s in (base or {}).items()
    }
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{src}: must map dimension names to {{labels: ..., cues: ..., ordered: ...}}, got {type(raw).__name__}"
        )
    for dim, spec in raw.items():
        where = f"{src}, dimension '{dim}'"
        if not isinstance(dim, str) or not dim.strip():
            raise ConfigError(f"{src}: dimension names must be non-empty strings, got {dim!r}")
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"{where}: must be a mapping with 'labels' (and optional 'cues', 'ordered', 'replace'), got {spec!r}"
            )
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            key = min(map(str, unknown))
            raise ConfigError(
                f"{where}: unknown key '{key}'{nearest(key, _SPEC_KEYS)}; allowed: {', '.join(sorted(_SPEC_KEYS))}"
            )
        labels = spec.get("labels", {})
        if not isinstance(labels, Mapping):
            raise ConfigError(f"{where}: 'labels' must map each label to its synonyms, got {labels!r}")
        for key in ("ordered", "replace"):
            if not isinstance(spec.get(key, False), bool):
                raise ConfigError(f"{where}: '{key}' must be true or false, got {spec[key]!r}")
        new = dim not in out or spec.get("replace", False)
        if new:
            if not labels:
                raise ConfigError(f"{where}: a new (or replaced) dimension needs 'labels'")
            out[dim] = {"ordered": spec.get("ordered", False), "cues": [], "labels": {}}
        elif "ordered" in spec and spec["ordered"] != out[dim]["ordered"]:
            raise ConfigError(f"{where}: 'ordered' cannot change without replace: true")
        entry = out[dim]
        entry["cues"] += _words(spec.get("cues", []), f"{where}, cues")
        for label, synonyms in labels.items():
            if not isinstance(label, str) or not label.strip():
                raise ConfigError(f"{where}: labels must be non-empty strings, got {label!r}")
            if label not in entry["labels"]:
                if entry["ordered"] and not new:
                    order = " < ".join(entry["labels"])
                    raise ConfigError(
                        f"{where}: is ordered ({order}); to add the level '{label}' give all its labels "
                        "in order with replace: true"
                    )
                entry["labels"][label] = []
            entry["labels"][label] += _words(
                synonyms if synonyms is not None else [], f"{where}, synonyms of label '{label}'"
            )
    return out


class Vocabulary:
    """A checked vocabulary compiled into one longest-first scanner."""

    def __init__(self, table: dict[str, dict], src: str = "vocabulary"):
        self.dims = {d: Dimension(d, s["ordered"], tuple(s["labels"])) for d, s in table.items()}
        self._labels: dict[str, dict[str, str]] = {}  # form -> {dim: label}
        self._cues: dict[str, list[str]] = {}  # form -> dims it names
        for dim, spec in table.items():
            for label, synonyms in spec["labels"].items():
                for word in [label, *synonyms]:
                    form = self._form(word, f"{src}, dimension '{dim}', label '{label}'")
                    other = self._labels.setdefault(form, {}).setdefault(dim, label)
                    if other != label:
                        raise ConfigError(
                            f"{src}, dimension '{dim}': '{word}' is a synonym of both '{other}' and '{label}'"
                        )
            for word in spec["cues"]:
                dims = self._cues.setdefault(self._form(word, f"{src}, dimension '{dim}', cues"), [])
                if dim not in dims:
                    dims.append(dim)
        forms = set(self._labels) | set(self._cues)
        english = _trie([f for f in forms if not has_cjk(f)], tail=r"(?![a-z0-9])")  # whole words only
        chinese = _trie([f for f in forms if has_cjk(f)], tail="")
        self._scanner = re.compile(f"{_AGE_RE}|(?P<form>(?<![a-z0-9]){english}|{chinese})")

    @staticmethod
    def _form(word: str, where: str) -> str:
        form = _prep(word).strip()
        if not form or "\n" in form:
            raise ConfigError(f"{where}: synonym {word!r} is empty or holds clause punctuation (, . ; ! ? 。 、)")
        return form

    def _tokens(self, clause: str):
        """(start, end, {dim: label}, cue dims) for each vocabulary word of a clause, left to right."""
        for m in self._scanner.finditer(clause):
            if m.group("form") is not None:
                yield m.start(), m.end(), self._labels.get(m.group("form"), {}), self._cues.get(m.group("form"), [])
                continue
            years = _years(m)
            label = age_label(years) if years is not None else None
            if "age" in self.dims and label in self.dims["age"].labels:
                yield m.start(), m.end(), {"age": label}, []

    def find(self, text: str, dimensions: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Every label the text names, per dimension, in order of first mention (negated mentions left out)."""
        active = (
            list(self.dims) if dimensions is None else [dimensions] if isinstance(dimensions, str) else list(dimensions)
        )
        for dim in active:
            if dim not in self.dims:
                raise ConfigError(
                    f"unknown paralinguistic dimension '{dim}'{nearest(str(dim), self.dims)}; known: {', '.join(self.dims)}"
                )
        found: dict[str, list[str]] = {}
        for clause in _prep(text).split("\n"):
            tokens = list(self._tokens(clause))
            prev_end, prev_negated = 0, False
            for start, end, labels, _ in tokens:
                gap = clause[prev_end:start]
                negated = _negated(gap) or (prev_negated and gap.strip() in _LIST_JOINERS)
                prev_end, prev_negated = end, negated and bool(labels)
                candidates = {d: lab for d, lab in labels.items() if d in active}
                if negated or not candidates:
                    continue
                if len(candidates) > 1:
                    dim = self._nearest_cue(tokens, start, end, candidates)
                    candidates = {dim: candidates[dim]} if dim else {}
                for dim, label in candidates.items():
                    if label not in found.setdefault(dim, []):
                        found[dim].append(label)
        return found

    @staticmethod
    def _nearest_cue(tokens, start: int, end: int, candidates: dict[str, str]) -> str | None:
        best, best_dist = None, math.inf
        for c_start, c_end, _, cue_dims in tokens:
            for dim in cue_dims:
                dist = c_start - end if c_start >= end else start - c_end
                if dim in candidates and 0 <= dist < best_dist:
                    best, best_dist = dim, dist
        return best


_CACHE: dict[Any, Vocabulary] = {}
_BUILTIN_TABLE = _table(VOCABULARY, "paralinguistic VOCABULARY")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def load_vocabulary(extra: Mapping | str | os.PathLike | None = None) -> Vocabulary:
    """The built-in vocabulary, extended by ``extra``: a dict, or a JSON or YAML file of one (cached).

    >>> v = load_vocabulary({"emotion": {"labels": {"bored": ["无聊", "uninterested"]}}})
    >>> v.find("她听起来很无聊"), v.dims["emotion"].labels[-1]
    ({'emotion': ['bored']}, 'bored')
    """
    if extra is None:
        key: Any = None
    elif isinstance(extra, (str, os.PathLike)):
        path = Path(extra)
        if not path.is_file():
            raise ConfigError(f"{REWARD}: vocabulary file '{path}' does not exist")
        key = ("file", str(path.resolve()), path.stat().st_mtime_ns)
    elif isinstance(extra, Mapping):
        extra = _plain(extra)
        key = ("dict", json.dumps(extra, sort_keys=True, default=str, ensure_ascii=False))
    else:
        raise ConfigError(
            f"{REWARD}: vocabulary must be a dict or the path of a JSON/YAML file, got {type(extra).__name__}"
        )
    if key not in _CACHE:
        if key is None:
            _CACHE[key] = Vocabulary(_BUILTIN_TABLE)
        else:
            src = f"{REWARD}: vocabulary" + (f" '{key[1]}'" if key[0] == "file" else "")
            raw = _read_file(Path(key[1]), src) if key[0] == "file" else extra
            _CACHE[key] = Vocabulary(_table(raw, src, _BUILTIN_TABLE), src)
    return _CACHE[key]


def _read_file(path: Path, src: str) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{src}: must be a .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # OSError, UnicodeError, JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"{src}: could not be read: {exc}") from exc


# ------------------------------------------------------------------ parsing answers
def find_labels(text: str, dimensions: Sequence[str] | None = None, vocabulary: Any = None) -> dict[str, list[str]]:
    """Every label ``text`` names, per dimension (all, or ``dimensions``), in order of first mention.

    >>> find_labels("male or female? Probably a man, not angry but happy")
    {'gender': ['male', 'female'], 'emotion': ['happy']}
    """
    return load_vocabulary(vocabulary).find(text, dimensions)


def parse_attributes(
    text: str, dimensions: Sequence[str] | None = None, vocabulary: Any = None
) -> dict[str, str | None]:
    """One canonical label per dimension ``text`` names; None where it names several different ones.

    Dimensions it does not mention are absent. ``dimensions`` restricts the reading (and lets a bare
    shared word such as "high" count when only one of its dimensions is read).

    >>> parse_attributes("音调中高音，男声，可能是中年或老年")
    {'pitch': 'mid-high', 'gender': 'male', 'age': None}
    >>> parse_attributes("High.", dimensions=["pitch"]), parse_attributes("High.")
    ({'pitch': 'high'}, {})
    """
    return {
        d: labels[0] if len(labels) == 1 else None for d, labels in find_labels(text, dimensions, vocabulary).items()
    }


# ------------------------------------------------------------------ the reward
def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _gold_labels(vocab: Vocabulary, dim: str, value: Any, row: int, unknown_gold: str) -> list[str] | None:
    """The gold labels of one dimension of one row (None: left out)."""
    if dim == "age" and not isinstance(value, bool) and re.fullmatch(r"\s*[0-9]{1,3}(\.[0-9]+)?\s*", str(value)):
        labels = [age_label(float(str(value).strip()))]  # a bare number is an age in years (float() keeps \x1c-\x1f, which \s matched)
        labels = labels if labels[0] in vocab.dims["age"].labels else []
    else:
        labels = []
        for text in value if isinstance(value, (list, tuple)) else [value]:
            labels += [lab for lab in vocab.find(str(text), [dim]).get(dim, []) if lab not in labels]
    if labels and not (vocab.dims[dim].ordered and len(labels) > 1):
        return labels
    if unknown_gold == "skip":
        return None
    problem = f"names several levels ({', '.join(labels)})" if labels else "matches no label of the vocabulary"
    raise DataError(
        f"{REWARD}: row {row}, dimension '{dim}': gold label {value!r} {problem}; known labels: "
        f"{', '.join(vocab.dims[dim].labels)}. Add synonyms with the 'vocabulary' kwarg, or set unknown_gold: skip"
    )


def _row_gold(
    vocab: Vocabulary, row: int, attributes: Any, columns: Mapping[str, Sequence], scored: list[str], unknown_gold: str
) -> dict[str, list[str]]:
    if _missing(attributes):
        raw = {d: columns[d][row] for d in scored if d in columns}
    else:
        if isinstance(attributes, str):
            try:
                attributes = json.loads(attributes)
            except ValueError as exc:
                raise DataError(
                    f"{REWARD}: row {row}: 'attributes' is not valid JSON ({exc}): {attributes[:80]!r}"
                ) from exc
        if not isinstance(attributes, Mapping):
            raise DataError(
                f"{REWARD}: row {row}: 'attributes' must be a dict (or a JSON object) of dimension: label, got {attributes!r}"
            )
        by_name = {d.lower(): d for d in vocab.dims}
        raw = {}
        for key, value in attributes.items():
            dim = by_name.get(str(key).strip().lower())
            if dim is None and unknown_gold == "error":
                raise DataError(
                    f"{REWARD}: row {row}: 'attributes' names the unknown dimension '{key}'{nearest(str(key), vocab.dims)}; "
                    f"known: {', '.join(vocab.dims)} (add it with the 'vocabulary' kwarg, or set unknown_gold: skip)"
                )
            if dim is not None:
                raw[dim] = value
    gold = {}
    for dim in scored:
        if dim in raw and not _missing(raw[dim]):
            labels = _gold_labels(vocab, dim, raw[dim], row, unknown_gold)
            if labels:
                gold[dim] = labels
    return gold


def _credit(dim: Dimension, gold: list[str], said: list[str], ordinal_credit: str, tolerance: float) -> float:
    if not said:
        return 0.0
    if not dim.ordered:  # Jaccard: one gold label named among k gives 1/k
        return len(set(gold) & set(said)) / len(set(gold) | set(said))
    target = dim.rank(gold[0])
    credits = []
    for label in said:
        distance = abs(dim.rank(label) - target)
        partial = max(0.0, 1.0 - distance / tolerance) if ordinal_credit == "linear" else 0.0
        credits.append(1.0 if distance == 0 else partial)
    return sum(credits) / len(credits)


def _scored_dimensions(dimensions: Any, vocab: Vocabulary) -> list[str]:
    if dimensions is None:
        return list(vocab.dims)
    names = _words(dimensions, f"{REWARD}: dimensions") if isinstance(dimensions, str) else list(dimensions)
    for name in names:
        if name not in vocab.dims:
            raise ConfigError(
                f"{REWARD}: unknown dimension '{name}'{nearest(str(name), vocab.dims)}; known: {', '.join(vocab.dims)}"
            )
    if not names:
        raise ConfigError(f"{REWARD}: 'dimensions' is empty; leave it out to score every dimension")
    return names


@reward(REWARD)
def paralinguistic_accuracy(
    completions: Sequence,
    attributes: Sequence | None = None,
    dimensions: Sequence[str] | str | None = None,
    ordinal_credit: str = "linear",
    tolerance: float = 2,
    vocabulary: Mapping | str | None = None,
    unknown_gold: str = "error",
    **columns,
) -> list[float | None]:
    """Mean credit over a row's gold dimensions, in [0, 1]; None for a row with no gold dimension.

    Gold labels: the ``attributes`` column ({dimension: label}, or a JSON string of one) when a row
    has one; otherwise columns named after the dimensions (``gender``, ``age``, ``pitch``...). A
    row's ``attributes`` wins outright: its per-dimension columns are then not read. Gold labels
    are English or Chinese free text read with the same vocabulary (a number for ``age`` is years;
    a list gives several labels); one that matches no label, or names several levels of an ordered
    dimension, raises an error naming the row and the dimension, unless ``unknown_gold: skip``
    leaves that dimension out (and ignores unknown dimension names in ``attributes``).

    The answer is the last ``<answer>`` block, else the text after the thinking; the thinking is
    never read, and only the row's gold dimensions are looked for. Credit per dimension, when
    the answer names the labels ``said`` (none: 0):

    * unordered: ``|gold & said| / |gold | said|`` (one gold label named among k: 1/k);
    * ordered: the mean over ``said`` of 1 for the gold level, else with ``ordinal_credit: linear``
      (default) ``max(0, 1 - distance / tolerance)``, distance counted in levels (``tolerance: 2``:
      a neighbouring level earns 0.5), and 0 with ``ordinal_credit: none``.

    Hedging ("medium or fast") thus never beats committing to one's best guess.
    ``dimensions`` restricts the dimensions scored; ``vocabulary`` extends the vocabulary (see the module).

    >>> paralinguistic_accuracy(
    ...     ["<think>male?</think><answer>女性，青年，语速偏快</answer>", "A middle-aged man.", "no idea"],
    ...     attributes=[{"gender": "female", "age": "25y", "speed": "fast"}, '{"gender": "男", "age": "青年"}', None])
    [0.8333333333333334, 0.75, None]
    >>> paralinguistic_accuracy(["High.", "It is low"], pitch=["高音", "中高音"], ordinal_credit="none")
    [1.0, 0.0]
    """
    vocab = load_vocabulary(vocabulary)
    scored = _scored_dimensions(dimensions, vocab)
    if ordinal_credit not in ORDINAL_CREDIT:
        raise ConfigError(f"{REWARD}: ordinal_credit is '{ordinal_credit}'; choose one of: {', '.join(ORDINAL_CREDIT)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ConfigError(f"{REWARD}: tolerance must be a positive number of levels, got {tolerance!r}")
    if unknown_gold not in UNKNOWN_GOLD:
        raise ConfigError(f"{REWARD}: unknown_gold is '{unknown_gold}'; choose one of: {', '.join(UNKNOWN_GOLD)}")
    n = len(completions)
    gold_columns = {d: list(columns[d]) for d in scored if d in columns}
    for name, col in [("attributes", attributes if attributes is not None else [None] * n), *gold_columns.items()]:
        if len(col) != n:
            raise DataError(f"{REWARD}: column '{name}' has {len(col)} values for {n} completions")
    scores: list[float | None] = []
    for row, completion in enumerate(completions):
        gold = _row_gold(
            vocab, row, attributes[row] if attributes is not None else None, gold_columns, scored, unknown_gold
        )
        if not gold:
            scores.append(None)
            continue
        answer, _ = answer_span(as_text(completion))
        said = vocab.find(answer, list(gold))
        credits = [
            _credit(vocab.dims[d], labels, said.get(d, []), ordinal_credit, tolerance) for d, labels in gold.items()
        ]
        scores.append(sum(credits) / len(credits))
    return scores
