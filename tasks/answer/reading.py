"""How a question and a rule text are read, below both indexes (``tasks.answer.retrieve`` over chunks and
``tasks.answer.fact_retrieve`` over facts), which import this module and never each other's reading:

- :func:`tokens`: character bigrams of Chinese runs plus whole Latin words and numbers;
- the domain lexicon ``tasks/answer/lexicon.toml`` (:class:`Lexicon`, :func:`lexicon`);
- categories the documents define themselves (:class:`Category`, :func:`learn_categories`);
- a question in weighted parts (:class:`Query`, :func:`query_for`, :func:`expand`).

See ``tasks.answer.fact_retrieve`` for what each of these is for.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from tasks.ingest.chunk import MARKER
from tasks.ingest.facts import SENTENCE_BREAK
from tasks.ingest.normalize import fold
from tasks.ingest.numbers import CN_NUMERALS

__all__ = [
    "Category",
    "Lexicon",
    "Query",
    "expand",
    "learn_categories",
    "lexicon",
    "phrase_tag",
    "qualifier_tag",
    "query_for",
    "tokens",
    "unit_tag",
    "unwritten_expenses",
]

# Weights of the parts of a query (the question's own tokens weigh 1).
EXPANSION_WEIGHT = 0.6  # rule terms from the lexicon
CATEGORY_WEIGHT = 0.35  # category words learned from the documents
WEAK_WEIGHT = 0.25  # the question's filler bigrams and numbers
TAG_WEIGHT = 0.5  # unit and qualifier tags the question asks for
PHRASE_WEIGHT = 1.0  # an added rule term that the fact says as a whole
BIGRAM_SHARE = 0.4  # share of an added term's weight that its bigrams get in the fact index

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")


def tokens(text: str) -> list[str]:
    """Character bigrams of every CJK run (a lone character stands for itself), plus Latin words and numbers."""
    folded = fold(text)
    out: list[str] = []
    for run in _CJK_RUN.findall(folded):
        if len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    out.extend(m.group().lower() for m in _WORD.finditer(folded))
    return out


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Aspect particles that may split a two-character verb-object word in speech (吃了饭, 陪着吃, 打过车).
_ASPECT = frozenset("着了过")


# --- the lexicon ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lexicon:
    """The domain lexicon: colloquial word -> rule terms, and words that ask for a unit or a qualifier."""

    terms: Mapping[str, tuple[str, ...]]  # word -> rule terms (places are folded in: 乌鲁木齐 -> 新疆)
    units: Mapping[str, tuple[str, ...]]  # word -> ledger units
    qualifiers: Mapping[str, tuple[str, ...]]  # word -> ledger qualifiers
    digest: str  # sha256 of the file: part of an index's cache key
    regions: frozenset[str] = frozenset()  # the provinces and regions [places] maps to
    general_costs: frozenset[str] = frozenset()  # words in 费 that name no particular expense (经费)

    @property
    def rule_vocabulary(self) -> frozenset[str]:
        """Every rule term the lexicon can add (indexed as whole phrases, see :func:`phrase_tag`)."""
        return frozenset(t for targets in self.terms.values() for t in targets)

    @classmethod
    def parse(cls, text: str) -> Lexicon:
        data = tomllib.loads(text)
        terms: dict[str, tuple[str, ...]] = {}
        for word, targets in data.get("terms", {}).items():
            terms[fold(word)] = tuple(fold(t) for t in _as_list(targets))
        regions = frozenset(fold(r) for r in data.get("places", {}).values())
        for place, region in data.get("places", {}).items():
            extra = tuple(fold(t) for t in _as_list(region) if fold(t) != fold(place))
            if extra:
                terms[fold(place)] = tuple(dict.fromkeys(terms.get(fold(place), ()) + extra))
        units = {fold(w): tuple(_as_list(u)) for w, u in data.get("units", {}).items()}
        qualifiers = {fold(w): tuple(_as_list(q)) for w, q in data.get("qualifiers", {}).items()}
        general_costs = frozenset(fold(w) for w in data.get("costs", {}).get("general", []))
        return cls(
            terms, units, qualifiers, hashlib.sha256(text.encode()).hexdigest(), regions, general_costs
        )

    def matches(self, table: Mapping[str, tuple[str, ...]], text: str) -> list[str]:
        """Words of ``table`` in ``text``, scanning left to right and taking the longest word at each
        position (副教授 is read as 副教授, not as 教授)."""
        if not table:
            return []
        longest = max(len(w) for w in table)
        folded = fold(text)
        found: list[str] = []
        i = 0
        while i < len(folded):
            for size in range(min(longest, len(folded) - i), 0, -1):
                word = folded[i : i + size]
                if word in table:
                    found.append(word)
                    i += size
                    break
            else:
                # A verb-object word opened by an aspect particle (陪着吃 for 陪吃, 打了车 for 打车): Chinese
                # separates such words in speech, and the particle carries no meaning of its own here.
                split = folded[i : i + 3]
                if len(split) == 3 and split[1] in _ASPECT and split[0] + split[2] in table:
                    found.append(split[0] + split[2])
                    i += 3
                else:
                    i += 1
        return found

    def rule_terms(self, text: str) -> list[str]:
        """The rule terms the colloquial words of ``text`` stand for, in order, without repeats."""
        return list(dict.fromkeys(t for w in self.matches(self.terms, text) for t in self.terms[w]))

    def unit_tags(self, text: str) -> list[str]:
        return list(dict.fromkeys(u for w in self.matches(self.units, text) for u in self.units[w]))

    def qualifier_tags(self, text: str) -> list[str]:
        found = self.matches(self.qualifiers, text)
        return list(dict.fromkeys(q for w in found for q in self.qualifiers[w]))


# An expense a question names: two characters before 费 (会员费, 体检费, 手机话费), not 费用 ("the cost").
_EXPENSE = re.compile(r"(?=([\u3400-\u9fff]{2})费(?!用))")


def unwritten_expenses(question: str, written: Callable[[str], bool]) -> list[str]:
    """Expenses the question names that the documents never write (``written``: whether a character pair
    occurs in them), as "会员费": neither the word's last pair (员费) nor the pair before 费 (会员) is written,
    and the lexicon neither knows it as everyday words for a rule's term (房费 -> 住宿费) nor as a word that
    names no particular expense (经费, 花费). The rules say nothing of such an expense, whatever else of the
    question they speak of ("会员费能从科研经费里报销吗" shares 科研经费 with a rule on equipment)."""
    lex = lexicon()
    folded = fold(question)
    known = lex.matches(lex.terms, folded)
    unwritten = []
    for match in _EXPENSE.finditer(folded):
        stem = match.group(1)
        word = stem[1] + "费"
        if written(stem) or written(word) or word in lex.general_costs:
            continue
        if any(word in k or stem in k for k in known):
            continue
        unwritten.append(stem + "费")
    return list(dict.fromkeys(unwritten))


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """The bundled lexicon (``tasks/answer/lexicon.toml``), read once."""
    text = resources.files("tasks.answer").joinpath("lexicon.toml").read_text(encoding="utf-8")
    return Lexicon.parse(text)


@lru_cache(maxsize=1)
def everyday_words() -> Mapping[str, tuple[str, ...]]:
    """The lexicon read backwards: rule term -> the everyday words that mainly stand for it (住宿费 -> 住酒店,
    酒店…; 新疆 -> 乌鲁木齐…): words whose first rule term it is ("办会" is first 会议, so it is no word for 会议费),
    leaving out words that contain the term (住宿费用 is no rephrasing of 住宿费) and single characters (借 is a cue
    for 借款, no rephrasing of it)."""
    reverse: dict[str, list[str]] = {}
    for word, targets in lexicon().terms.items():
        if targets and targets[0] not in word and len(word) > 1:
            reverse.setdefault(targets[0], []).append(word)
    return {term: tuple(words) for term, words in reverse.items()}


def in_everyday_words(question: str, pick: float) -> str:
    """``question`` with its first rule term the lexicon has everyday words for replaced by one of them (chosen
    by ``pick`` in [0, 1)): "住宿费的标准是多少？" -> "住酒店的标准是多少？". Unchanged when it names no such term.
    Training rows asked this way teach the model to find 住宿费 in the rules when staff say 住酒店."""
    table = everyday_words()
    for term in lexicon().matches(table, question):
        if term in question:
            words = table[term]
            return question.replace(term, words[min(int(pick * len(words)), len(words) - 1)], 1)
    return question


# --- categories the documents define -------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """A member a document places in a category: "校级领导" in "一类人员住宿费", "奎文区" in "潍坊市城区"."""

    member: str
    category: str
    doc: str = ""
    how: str = ""  # the pattern: defines | colon | parenthesis


# Numbering and "本办法所称" before a defined term are not part of it.
_LEAD = re.compile(rf"^(?:{MARKER}|本(?:办法|细则|规定|制度)所称|所称)+")
_DEFINES = re.compile(r"是指|系指|指的是|包括|包含|(?<=[费金款员])指")
_ITEM_SPLIT = re.compile(r"[、，,/]|以及|(?<!以)及|和|与|或者")
# "全国性或者国际性学术会议": an item that is only a modifier in 性 shares the next item's head noun.
_MODIFIER = re.compile(r"^[\u4e00-\u9fff]{1,4}性$")
_AFTER_MODIFIER = re.compile(r"^[\u4e00-\u9fff]{1,4}性(?=[\u4e00-\u9fff]{2})")
_PAREN = re.compile(r"([\u4e00-\u9fff]{2,8})[（(](?:包括|包含|含|即|如)?([^（()）]*、[^（()）]*)[）)]")
_PAREN_TEXT = re.compile(r"[（(][^（()）]*[）)]")
_EXCLUDES = re.compile(r"除外|不含|不包括")
# An item that is a clause (a rule about something) rather than the name of something.
_NOT_MEMBER = re.compile(
    rf"\d|《|[{CN_NUMERALS}]+(?:元|天|人|次|年|月)|如下|以下|下同|按|执行|应|须|由|不得|可|据实|安排|原则"
)
_SCOPE = re.compile(r"(?:的)?(?:主要)?(?:开支|支出|使用)?范围$|主要$")
_HEAD_CUT = re.compile(r".*(?:的|乘坐|入住|离开|前往|包括|是指|主要)")
_TAIL = re.compile(r"(?:，|,)?下同$|等(?:[\u4e00-\u9fff]{1,2})?$")
# Words too general to be a member of anything.
_GENERAL = _words("费用 人员 工作 学校 学院 单位 其他 相关 项目 经费 支出 活动 事项 材料 规定 合作")


def _clean_category(text: str) -> str:
    """The category a definition names: list markers and 本办法所称 dropped, the last run of Chinese kept,
    "开支范围" dropped (会议费开支范围包括… defines 会议费)."""
    text = _LEAD.sub("", text.strip()).strip("　 ")
    runs = _CJK_RUN.findall(text)
    return _SCOPE.sub("", runs[-1]) if runs else ""


def _head_noun(text: str) -> str:
    """The noun phrase ending ``text``: what follows its last 的, 包括 or verb of motion (领导乘坐火车软席 ->
    火车软席)."""
    cut = _HEAD_CUT.sub("", text)
    return cut if len(cut) >= 2 else text


def _members(text: str, max_len: int = 12) -> list[str]:
    """The names a definition or list enumerates: split at 、，/和及与或者; a long item cut to the noun after
    its last 的; a modifier in 性 given the next item's head (全国性或者国际性学术会议: 全国性学术会议);
    items that are clauses (按…执行, 由…审批), numbers or too general (费用) left out."""
    out = []
    items = [_TAIL.sub("", item.strip("　 “”\"'")) for item in _ITEM_SPLIT.split(text.strip())]
    items = [_head_noun(item) if len(item) > 6 else item for item in items]
    for i, item in enumerate(items):
        if _MODIFIER.match(item) and i + 1 < len(items) and _AFTER_MODIFIER.match(items[i + 1]):
            item += _AFTER_MODIFIER.sub("", items[i + 1])
        if (
            2 <= len(item) <= max_len
            and _CJK_RUN.fullmatch(item)
            and not _NOT_MEMBER.search(item)
            and item not in _GENERAL
        ):
            out.append(item)
    return out


def learn_categories(text: str, doc: str = "") -> list[Category]:
    """(member, category) pairs that ``text`` defines, by three generic patterns:

    - ``C是指/指/包括 M、M和M`` (a definition: "差旅费是指…城市间交通费、住宿费…"; "住宿费指…房租费用");
    - ``C：M及M，…`` (a colon after a short heading: "一类人员住宿费：校级领导及相当职务人员，…");
    - ``C（M、M、M，下同）`` (a parenthesised list: "潍坊市城区（奎文区、潍城区…，下同）").

    Members are names (see :func:`_members`); a parenthesis saying 除外 lists exceptions, not members.
    """
    found: list[Category] = []
    for sentence in SENTENCE_BREAK.split(fold(text)):
        sentence = sentence.strip()
        if not sentence:
            continue
        for match in _PAREN.finditer(sentence):
            if not _EXCLUDES.search(match.group(2)):
                category = _head_noun(match.group(1))
                found += [Category(m, category, doc, "parenthesis") for m in _members(match.group(2))]
        plain = _PAREN_TEXT.sub("", sentence)
        for clause in re.split(r"[，,：:]", plain):
            match = _DEFINES.search(clause)
            if match and 2 <= match.start() <= 30:
                category = _clean_category(clause[: match.start()])
                rest = plain[plain.find(clause) + match.end() :]
                if "、" not in rest:  # a definition without a list names one thing: up to the comma
                    rest = re.split(r"[，,]", rest, maxsplit=1)[0]
                if 2 <= len(category) <= 12:
                    found += [Category(m, category, doc, "defines") for m in _members(rest) if m != category]
                break
        colon = re.match(r"^([^，,]{2,24}?)[：:]([^，,]+)", plain)
        if colon:
            category = _clean_category(colon.group(1))
            if 2 <= len(category) <= 12 and not _NOT_MEMBER.search(category):
                found += [
                    Category(m, category, doc, "colon") for m in _members(colon.group(2)) if m != category
                ]
    return list(dict.fromkeys(found))


def cjk_bigrams(text: str) -> set[str]:
    """The pairs of adjacent Chinese characters in ``text`` (folded)."""
    return {t for t in tokens(text) if len(t) == 2 and _CJK.match(t)}


# Bigrams too common in questions and rules to show that a question names a member.
_WEAK = _words("人员 费用 工作 学校 学院 单位 规定 标准 其他 相关 以上 以下 出差")


def _names(question_text: str, question_bigrams: set[str], member: str) -> bool:
    """Whether the question (with its lexicon terms) names ``member``: it contains it, or, for a member of
    four or more characters, at least three quarters of the member's bigrams and two that are not common words
    (中级专业技术职务 does not name 正高级专业技术职务人员)."""
    if member in question_text or ("性" in member and member.replace("性", "") in question_text):
        return True  # 国际学术会议 names 国际性学术会议: speech drops the adjectival 性
    grams = cjk_bigrams(member)
    if len(member) < 4 or not grams:
        return False
    shared = grams & question_bigrams
    return len(shared) / len(grams) >= 0.75 and len(shared - _WEAK) >= 2


# --- queries -------------------------------------------------------------------------------------------------

# Bigrams of how staff ask rather than what they ask about (pronouns, interrogatives, politeness): they weigh
# little, so "我们这边最多能去几个人" is matched on what it names, not on its wording.
_FILLER = _words(
    "多少 少钱 少元 是多 能报 报多 能拿 拿多 能补 补多 给多 能给 我是 我们 们这 这边 那边 这个 那个 这种 这笔 "
    "怎么 么算 什么 可以 以吗 能不 不能 一下 请问 需要 是否 的话 就得 得去 要到 能去 能用 还能 下周 下个 个月 "
    "明天 今天 去年 今年 上学 学期 听说 一直 大概 一般 具体 之前 以后 时候 的时 最晚 最早 多长 长时 多久 "
    "每人 人每 每天 一天 每月 一个 一次 标准 准是 是每 天多 规定"
)


@dataclass(frozen=True)
class Query:
    """A question as the indexes read it, in weighted parts: its own tokens (content, then filler and numbers,
    which weigh less), tokens of the rule terms the lexicon adds, of the categories learned from the
    documents, and the unit and qualifier tags it asks for."""

    question: str
    content: tuple[str, ...]
    weak: tuple[str, ...]  # filler bigrams and numbers of the question
    terms: tuple[str, ...]  # added rule terms: the lexicon's, then the learned categories'
    lexical: tuple[str, ...]  # tokens of the lexicon's terms the question does not already have
    learned: tuple[str, ...]  # tokens of the categories' terms not already in the question or lexical
    tags: tuple[str, ...]  # unit and qualifier tags
    # Ledger units the question asks for ("百分之多少" -> %); () when it does not say.
    units: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()  # phrase tags of the lexicon's terms
    learned_phrases: tuple[str, ...] = ()  # phrase tags of the learned categories
    regions: frozenset[str] = frozenset()  # provinces and regions the question names (directly or by a city)

    def parts(self) -> list[tuple[tuple[str, ...], float]]:
        """Weighted token lists for an index of plain text (the chunks): the question's tokens and the
        bigrams of the added terms."""
        return [
            (self.content, 1.0),
            (self.weak, WEAK_WEIGHT),
            (self.lexical, EXPANSION_WEIGHT),
            (self.learned, CATEGORY_WEIGHT),
        ]

    def fact_parts(self) -> list[tuple[tuple[str, ...], float]]:
        """Weighted token lists for the fact index, which also knows whole rule terms, units and qualifiers:
        an added term counts fully only where the fact says it as a whole (中级专业技术职务 does not match
        正高级专业技术职务人员 by its shared bigrams), its bigrams count a little."""
        return [
            (self.content, 1.0),
            (self.weak, WEAK_WEIGHT),
            (self.phrases, PHRASE_WEIGHT),
            (self.learned_phrases, PHRASE_WEIGHT * CATEGORY_WEIGHT / EXPANSION_WEIGHT),
            (self.lexical, EXPANSION_WEIGHT * BIGRAM_SHARE),
            (self.learned, CATEGORY_WEIGHT * BIGRAM_SHARE),
            (self.tags, TAG_WEIGHT),
        ]


def unit_tag(unit: str) -> str:
    return f"unit:{unit}"


def qualifier_tag(qualifier: str) -> str:
    return f"qual:{qualifier}"


def phrase_tag(term: str) -> str:
    return f"term:{term}"


def _expansions(question: str, categories: Iterable[Category]) -> tuple[list[str], list[str]]:
    lex = lexicon()
    folded = fold(question)
    terms = [t for t in lex.rule_terms(question) if t not in folded]
    text = folded + "|" + "|".join(terms)
    grams, own = cjk_bigrams(text), cjk_bigrams(folded)
    learned = []
    for category in categories:
        if category.category in text:
            continue
        # A definition's list (差旅费是指…住宿费、伙食补助费…) is a scope, not a class: only the question's own
        # words lead to it; a class (一类人员住宿费：校级领导…) is also reached through the lexicon's terms.
        if category.how == "defines":
            named = _names(folded, own, category.member)
        elif category.category.endswith("费") and not (cjk_bigrams(category.category) - _WEAK) & grams:
            # A class of an expense (一类人员住宿费: 校级领导…) answers a question about that expense only: "给分管
            # 校领导签字" names a member but asks nothing about 住宿.
            named = False
        else:
            named = _names(text, grams, category.member)
        if named:
            learned.append(category.category)
    return list(dict.fromkeys(terms)), [t for t in dict.fromkeys(learned) if t not in terms]


def expand(question: str, categories: Iterable[Category] = ()) -> list[str]:
    """The rule terms a question in everyday words also asks about: the lexicon's terms for its words, then
    the categories (learned from the documents, see :func:`learn_categories`) of the members it names.

    ``expand("我是讲师，住酒店一晚能报多少")`` -> ``["中级职称", "中级专业技术职务", "其他人员", "住宿费"]``.
    """
    terms, learned = _expansions(question, categories)
    return terms + learned


def query_for(question: str, categories: Iterable[Category] = ()) -> Query:
    lex = lexicon()
    own = tokens(question)
    content = tuple(t for t in own if t not in _FILLER and not t[0].isdigit())
    weak = tuple(t for t in own if t in _FILLER or t[0].isdigit())
    terms, learned = _expansions(question, categories)
    have = set(own)
    lexical = tuple(dict.fromkeys(t for term in terms for t in tokens(term) if t not in have))
    have |= set(lexical)
    learned_tokens = tuple(dict.fromkeys(t for term in learned for t in tokens(term) if t not in have))
    units = tuple(lex.unit_tags(question))
    tags = tuple([unit_tag(u) for u in units] + [qualifier_tag(q) for q in lex.qualifier_tags(question)])
    folded = fold(question)
    regions = frozenset(r for r in lex.regions if r in folded or r in terms)
    return Query(
        question,
        content,
        weak,
        tuple(terms + learned),
        lexical,
        learned_tokens,
        tags,
        units,
        tuple(phrase_tag(t) for t in terms),
        tuple(phrase_tag(t) for t in learned),
        regions,
    )
