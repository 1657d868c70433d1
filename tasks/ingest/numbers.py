"""The one number parser: every numeric mention of a Chinese finance rule text, with value, unit and role.

Every stage (facts, instruction data, answer checking) reads numbers through this module, so a number means
the same thing everywhere: "5 万元" is 50000 元, "每人每天100元" is 100 元/人·天, "百分之十" is 10 %.

Design: one precompiled master regex finds where a mention starts (leftmost first, alternatives in priority
order: line-start item numbering, document numbers, dates, article numbers, fractions, plain numbers); a
small handler per kind then reads the details with anchored ``match`` calls. Matching runs on a copy of the
text whose full-width forms are folded to ASCII by a one-to-one character map, so every offset found there
is an offset into the original text and ``raw == text[start:end]`` holds by construction.

Kinds: "quantity" (a rule number, the only kind that goes into the ledger), "doc_number" (〔2022〕74号),
"article" (第二十条), "item" (list numbering: 一、 （三） 2. ①), "date" (calendar dates, years, clock times),
"ordinal" (第一, 第二次, 3号楼, 附件1) and "other" (identifiers: phone numbers, bare digit strings of 7+
digits, numbers with a leading zero such as 0536).

Conventions where a choice had to be made:
- Fractions have unit "" and a value rounded to 4 places when inexact (三分之一 -> 0.3333, 1/4 -> 0.25);
  百分之N is N with unit "%".
- A date's value packs its parts: 2022年3月1日 -> 20220301, 2022年 -> 2022, 12月31日 -> 1231; a clock
  time is HHMM (4:00 -> 400). Doc numbers carry their serial (〔2022〕74号 -> 74), articles their number
  with the word as unit (第二十条 -> 20, "条").
- Qualifiers are canonical words in written order joined by "|"; 不得超过/不能超过 -> 不超过, ≤ -> 不超过,
  ≥ -> 不低于, 内 after a unit ("15 日内") -> 以内. They are set on quantities only.
- "第 1-3 个工作日" (a window of days) is a quantity 1-3 工作日; "第一个工作日" is an ordinal.
- At a line start (or after 。；：), "1.1000 元" is item "1." plus 1000 元 (a fraction part of 3+ digits
  is never a rule amount); "1.5亿元" stays a decimal unless it continues a "1. 2. ..." list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, Inexact, InvalidOperation, localcontext
from functools import lru_cache

import cn2an

__all__ = [
    "CN_DIGITS",
    "CN_INDEX_NUMERALS",
    "CN_NUMERALS",
    "KINDS",
    "QUALIFIERS",
    "WRITTEN_KINDS",
    "NumberMention",
    "canonical",
    "find_numbers",
    "first_number_char",
    "parse_numeral",
    "range_key",
    "readings",
    "rule_numbers",
    "units_agree",
    "values_match",
]

KINDS = ("quantity", "doc_number", "article", "item", "date", "ordinal", "other")
# What a document writes and no fact stands for: an answer may only repeat these from its sources (a date, a
# clock time, an article, an ordinal, an identifier); list numbering ("item") is no claim.
WRITTEN_KINDS = ("date", "article", "ordinal", "doc_number", "other")


@dataclass(frozen=True)
class NumberMention:
    """One number as written in a text, with its canonical value in the base unit."""

    value: Decimal  # in the base unit: "5 万元" -> 50000 (元); "20%" -> 20 (%); "三分之一" -> 0.3333
    value_max: Decimal | None  # upper end of a range ("1500-2400元"), else None
    unit: str  # canonical unit ("元", "元/人·天", "天", "%", ...); "" when none
    qualifier: str  # canonical qualifier words in written order joined by "|" ("含|以下"); "" when none
    raw: str  # the number (and range, and unit) exactly as written; == text[start:end]
    start: int
    end: int
    kind: str  # one of KINDS

    @property
    def is_rule(self) -> bool:
        """Whether this is a rule number (a quantity) rather than numbering, a date or an identifier."""
        return self.kind == "quantity"

    def value_str(self) -> str:
        """The value as a canonical decimal string: "1200", "0.5", "0.3333"."""
        return canonical(self.value)

    def values(self) -> tuple[Decimal, ...]:
        """The number(s) it states: its value, and for a range also the upper end."""
        return (self.value,) if self.value_max is None else (self.value, self.value_max)


# ---------------------------------------------------------------------------------------------------------
# Folding. Every replacement is one character for one character, so offsets stay valid in the original.
_FOLD: dict[int, int | str] = {0xFF10 + i: ord("0") + i for i in range(10)}
_FOLD.update({0xFF21 + i: ord("A") + i for i in range(26)})
_FOLD.update({0xFF41 + i: ord("a") + i for i in range(26)})
for _chars, _to in (
    ("％﹪", "%"),
    ("＜", "<"),
    ("＞", ">"),
    ("￥", "¥"),
    ("．", "."),
    ("／", "/"),
    ("～〜", "~"),
    ("－—–―‐‑‒−﹣", "-"),  # any dash between two numbers is a range ("1000 元—10000 元")
    ("（﹙", "("),
    ("）﹚", ")"),
    ("〔【［", "["),
    ("〕】］", "]"),
    ("：", ":"),
    ("\u3000\u00a0\u2002\u2003\u2009", " "),
    ("•・‧∙⋅", "·"),  # 元/人•天 and 元/人·天 are the same unit
):
    for _c in _chars:
        _FOLD[ord(_c)] = _to

_FOLD_RE = re.compile("[" + re.escape("".join(map(chr, _FOLD))) + "]")
_FOLD_STR = {chr(k): v if isinstance(v, str) else chr(v) for k, v in _FOLD.items()}


def _fold(text: str) -> str:
    """Full-width forms to ASCII, one character for one; a regex pass touches only the few that change."""
    return _FOLD_RE.sub(lambda m: _FOLD_STR[m.group()], text)


# ---------------------------------------------------------------------------------------------------------
# Building blocks (regex source strings).
_S = r"[ \t]*"  # PDF extraction puts spaces between number and unit ("1000 元", "8.8 折"), never newlines
# The one set of Chinese numeral characters every stage's patterns are built from.
CN_DIGITS = "零〇一二两三四五六七八九"
CN_NUMERALS = CN_DIGITS + "十百千万亿"  # every character a Chinese numeral is written with
# The numerals that number headings and list items (第二十条, 三、, （十二）); 兩 as Big5 documents write it.
CN_INDEX_NUMERALS = CN_DIGITS + "十百兩"
_CNRUN = f"[{CN_NUMERALS}]+"
_CNNUM = rf"{_CNRUN}(?:点[{CN_DIGITS}]+)?"
# Thousands separators only in groups of exactly three ("1,2000" is 1 then 2000, not 12000).
_AR = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?)"
_SEP = r"[·./]"
# What may follow "元/": per person-day, per room-night, per km... (canonicalised by _PER_CANON).
_PER = (
    rf"人(?:{_S}{_SEP}{_S})?(?:天|日|餐|月|次|年)|(?:天|日)(?:{_S}{_SEP}{_S})?人"
    rf"|间(?:{_S}{_SEP}{_S})?(?:天|夜|晚)|公里|小时|课时|学时|平方米|千字|人|天|日|次|月|年|餐|晚|间|件|台|个|套|项"
    r"|篇|页|张"
)
# Units other than money, longest first; lookaheads keep words like 人民币, 一次性, 折旧, 项目 out.
_OTHER_UNITS = (
    r"个工作日|工作日|个小时|小时|个月|个学时|学时|课时|平方米|公里|千米|人次|周岁|分钟"
    r"|个|天|日|月|年|周|人(?![民员])|次(?!性)|折(?![旧扣算合])|%|‰|项(?!目)|份|页|名(?![称单义额])"
    r"|张|台(?!账)|件|岁|倍|家(?![庭属])|篇|套(?!取)|间"
)
_UNIT_BODY = rf"(?:元(?:{_S}/{_S}(?:{_PER}))?|美元|欧元|港元|{_OTHER_UNITS})"
_RANGE_SEP = r"(?:-{1,2}|~|至|到)"

_UNIT_RE = re.compile(
    rf"{_S}(?:(?P<yuan>元)(?:{_S}/{_S}(?P<per>{_PER}))?|(?P<cur>美元|欧元|港元)|(?P<u>{_OTHER_UNITS}))"
)
_UNIT_CANON = {
    "个工作日": "工作日",
    "个小时": "小时",
    "个月": "月",
    "个学时": "学时",
    "千米": "公里",
    "周岁": "岁",
    "日": "天",
}
_PER_CANON = {
    "人天": "人·天",
    "人日": "人·天",
    "天人": "人·天",
    "日人": "人·天",
    "人餐": "人·餐",
    "人月": "人·月",
    "人次": "人·次",
    "人年": "人·年",
    "间天": "间·天",
    "间夜": "间·天",
    "间晚": "间·天",
    "日": "天",
    "晚": "天",
}
_PER_STRIP = re.compile(rf"[ \t]|{_SEP}")
_SCALES = {"万": Decimal(10000), "亿": Decimal(100000000), "千": Decimal(1000)}

# Qualifiers written before the number; variants with 不得/不能 mean the same bound as the plain word.
_PREFIX_WORDS = (
    "不得超过|不能超过|不应超过|不可超过|未超过|不得高于|不得低于|不超过|不高于|不低于|不少于|不多于"
    "|不足|不满|未满|超过|高于|低于|最高|最多|最低|最少|至少|达到|满|<=|>=|≤|≥|<|>"
)
_PREFIX_CANON = {
    "不得超过": "不超过",
    "不能超过": "不超过",
    "不应超过": "不超过",
    "不可超过": "不超过",
    "未超过": "不超过",
    "不得高于": "不高于",
    "不得低于": "不低于",
    # table notation: ≤ is an upper bound written as a symbol, and so on
    "≤": "不超过",
    "<=": "不超过",
    "≥": "不低于",
    ">=": "不低于",
    "<": "低于",
    ">": "超过",
}
_PREFIX_RE = re.compile(rf"(?:({_PREFIX_WORDS}){_S})?({_PREFIX_WORDS}){_S}$")
# Every qualifier word a mention can carry (prefix words first, then suffix words).
QUALIFIERS = (
    *("不超过", "不高于", "不低于", "不少于", "不多于", "不足", "不满", "未满", "超过", "高于", "低于"),
    *("最高", "最多", "最低", "最少", "至少", "达到", "满"),
    *("以上", "以下", "以内", "及以上", "及以下", "含", "不含"),
)

# After the number: 以上/以下/以内, and a parenthetical (含)/（含 1000 元） that restates the bound; the
# restatement is absorbed so "1000 元（含 1000 元）以下" is one mention, not two.
_RESTATE = rf"(?:(?:{_AR}|{_CNNUM}){_S}(?:[万亿千]{_S})?(?:{_UNIT_BODY})?|本数)"
_SUFFIX_RE = re.compile(
    rf"{_S}(?:\({_S}(?P<pq>不?含){_S}(?:{_RESTATE})?{_S}\)"
    r"|(?P<w>及以上|及以下|以上|以下|以内)"
    rf"|(?P<bq>不?含)(?={_S}及?以[上下])"
    r"|(?P<nei>内)(?![部容地外控设涵需]))"
)

# "每人每天补助 100 元": the per-phrase before the number turns a bare 元 into 元/人·天. The gap between the
# phrase and the number (or its qualifier) holds no punctuation, digit or other 每, and is at most 8 chars.
_PER_PREFIX = {
    "每人每天": "元/人·天",
    "每人每日": "元/人·天",
    "每天每人": "元/人·天",
    "每日每人": "元/人·天",
    "每人每餐": "元/人·餐",
    "每人每月": "元/人·月",
    "每月每人": "元/人·月",
    "每人每次": "元/人·次",
    "每次每人": "元/人·次",
    "每人次": "元/人·次",
    "每人每年": "元/人·年",
    "每年每人": "元/人·年",
    "每间每天": "元/间·天",
    "每间每晚": "元/间·天",
    "每间夜": "元/间·天",
    "每公里": "元/公里",
    "每小时": "元/小时",
    "每学时": "元/学时",
    "每课时": "元/课时",
    "每人": "元/人",
    "人均": "元/人",
    "每天": "元/天",
    "每日": "元/天",
    "每次": "元/次",
    "每月": "元/月",
    "每年": "元/年",
    "每餐": "元/餐",
}
_PER_PREFIX_RE = re.compile(
    "(" + "|".join(sorted(_PER_PREFIX, key=len, reverse=True)) + r")([^每，。；;,:、!?！？()\[\]\d\n]{0,8})$"
)

# ---------------------------------------------------------------------------------------------------------
# The master regex. Alternatives are tried in this order at the leftmost position where any matches.
_LS = r"(?:^|(?<=[。；;!?！？:]))[ \t\r]*"  # a line start or a sentence end: where list numbering lives
_ITEM_CORE = (
    rf"[一二三四五六七八九十]{{1,3}}{_S}[、.]"
    rf"|\d{{1,2}}(?:\.\d{{1,2}}){{0,3}}{_S}[、)]"
    # "1.1000 元以下" at a line start is item "1." + 1000 元, never the decimal 1.1000: no rule amount has
    # three or more decimals. Shorter ones ("1.5亿元") stay decimals unless they continue a list (_on_num).
    rf"|\d{{1,2}}\.(?=\d{{3}}|\d{{1,3}},\d{{3}})(?={_AR}{_S}(?:[万亿千]{_S})?{_UNIT_BODY})"
    # section numbering "1.1 总则" (not followed by a unit, so not a decimal quantity)
    rf"|\d{{1,2}}(?:\.\d{{1,2}}){{1,3}}(?![\d.])(?!{_S}(?:[万亿千]|{_UNIT_BODY}))(?={_S}[^\d\s])"
    r"|\d{1,2}\.(?!\d)"
)
# Every alternative starts with one of these characters; testing it first lets the engine skip the other
# positions of the text with one class test instead of trying every alternative (10x faster on real text).
_FIRST_CHAR = rf"(?=[\d \t\r第\[(\u2460-\u249b\u2776-\u277f{CN_NUMERALS}])"
_MASTER = re.compile(
    _FIRST_CHAR
    + "(?:"
    + "|".join(
        (
            rf"{_LS}(?P<item>{_ITEM_CORE})",
            rf"(?P<doc>\[{_S}(?:19|20)\d{{2}}{_S}\]{_S}第?{_S}\d+{_S}号|\({_S}(?:19|20)\d{{2}}{_S}\){_S}第?{_S}\d+{_S}号)",
            rf"(?P<yearbr>[\[(]{_S}(?:19|20)\d{{2}}{_S}[\])])",
            r"(?P<circ>[\u2460-\u249b\u2776-\u277f])",
            rf"(?P<pitem>\({_S}(?:\d{{1,2}}|[一二三四五六七八九十]{{1,3}}){_S}\))",
            r"(?P<dsep>(?<![\d.])(?:19|20)\d{2}(?:-\d{1,2}-\d{1,2}|\.\d{1,2}\.\d{1,2}|/\d{1,2}/\d{1,2})(?![\d.]))",
            rf"(?P<dy>(?<!\d)(?:19|20)\d{{2}}{_S}(?:{_RANGE_SEP}{_S}(?:19|20)\d{{2}}{_S})?年)",
            rf"(?P<dmd>(?<![\d.])(?:1[0-2]|0?[1-9]){_S}月{_S}(?:3[01]|[12]\d|0?[1-9]){_S}[日号])",
            rf"(?P<time>(?<![\d.])(?:2[0-4]|[01]?\d)(?:{_S}:{_S}[0-5]\d(?!\d)|{_S}时(?![间候效])"
            rf"|{_S}点(?:{_S}[0-5]?\d{_S}分)?(?=前|后|至|到|整|半|钟|以前|以后|之前|之后|[^\u4e00-\u9fff]|$)))",
            r"(?P<phone>(?<!\d)(?:\d{3,4}-\d{7,8}|1[3-9]\d{9})(?!\d))",
            rf"(?P<dcy>(?<![{CN_NUMERALS}])[〇零一二三四五六七八九]{{4}}{_S}年)",
            rf"(?P<dcmd>(?<![{CN_NUMERALS}])(?:十[一二]?|[一二三四五六七八九]){_S}月{_S}"
            rf"(?:[一二]?十[一二三四五六七八九]?|三十一?|[一二三四五六七八九]){_S}[日号])",
            rf"(?P<ord>第{_S}[\d{CN_NUMERALS}])",
            rf"(?P<frac>(?<![{CN_NUMERALS}]){_CNRUN}{_S}分{_S}之{_S}[\d{CN_NUMERALS}])",
            r"(?P<afrac>(?<![A-Za-z\d/.])\d{1,3}/\d{1,3}(?![\d/.]))",
            r"(?P<num>(?<![A-Za-z\d])\d)",
            # A Chinese numeral counts only with a unit (or as the start of a range): 八十元, 三个月, 一次.
            # Not after characters that make 一 part of a word (统一, 唯一, 之一, 进一步, 每一, 最后一).
            rf"(?P<cnq>(?<![{CN_NUMERALS}点每统唯之进划逐单同任其另某])(?<!最后){_CNNUM}"
            rf"(?={_S}(?:{_UNIT_BODY}|{_RANGE_SEP}{_S}[{CN_NUMERALS}])))",
        )
    )
    + ")",
    re.MULTILINE,
)

# Detail regexes, used with .match at a position the master found.
_AR_NUM_RE = re.compile(rf"(?P<n>{_AR})(?:{_S}(?P<sc>[万亿]|千(?={_S}元)))?")
_CN_NUM_RE = re.compile(_CNNUM)
_RANGE_RE = re.compile(rf"{_S}{_RANGE_SEP}{_S}")
_DOC_RE = re.compile(rf"[\[(]{_S}(?:19|20)\d{{2}}{_S}[\])]{_S}第?{_S}(?P<n>\d+){_S}号")
_DY_RE = re.compile(
    rf"(?P<y>\d{{4}}){_S}(?:{_RANGE_SEP}{_S}\d{{4}}{_S})?年"
    rf"(?:{_S}(?P<m>1[0-2]|0?[1-9]){_S}月(?:{_S}(?P<d>3[01]|[12]\d|0?[1-9]){_S}[日号])?)?"
)
_DMD_RE = re.compile(rf"(?P<m>\d+){_S}月{_S}(?P<d>\d+){_S}[日号]")
_DSEP_RE = re.compile(r"(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2})")
_TIME_RE = re.compile(rf"(?P<h>\d+)(?:{_S}:{_S}(?P<mi>\d\d)|{_S}点{_S}(?P<mi2>\d+){_S}分)?")
_DCY_RE = re.compile(
    rf"(?P<y>[〇零一二三四五六七八九]{{4}}){_S}年"
    rf"(?:{_S}(?P<m>十[一二]?|[一二三四五六七八九]){_S}月"
    rf"(?:{_S}(?P<d>[一二]?十[一二三四五六七八九]?|三十一?|[一二三四五六七八九]){_S}[日号])?)?"
)
_DCMD_RE = re.compile(rf"(?P<m>[{CN_NUMERALS}]+){_S}月{_S}(?P<d>[{CN_NUMERALS}]+){_S}[日号]")
_ORD_RE = re.compile(
    rf"第{_S}(?P<a>\d+|{_CNRUN})(?:{_S}(?P<sep>{_RANGE_SEP}){_S}(?P<b>\d+|{_CNRUN}))?"
    # "第一、二条": a list of numbers belongs to the article word after it
    rf"(?:(?:{_S}[、,和及或]{_S}(?:\d+|{_CNRUN}))*(?P<w>{_S}(?:条|章|节|款|项|编|目|号)))?"
)
_ARTICLE_AFTER_RE = re.compile(rf"{_S}(?:条|章|节|款)")
_ATTACHMENT_BEFORE_RE = re.compile(rf"(?:附件|附表|附录|表|图){_S}$")
_FRAC_RE = re.compile(rf"(?P<den>{_CNRUN}){_S}分{_S}之{_S}(?P<num>{_AR}|{_CNNUM})")
_HAO_RE = re.compile(rf"{_S}号")
_NON_DIGIT_RE = re.compile(r"\D")
_SHORT_SPLIT_RE = re.compile(rf"(\d{{1,2}})\.(?=\d{{1,2}}(?!\d){_S}(?:[万亿千]{_S})?{_UNIT_BODY})")
_AT_LINE_START_RE = re.compile(r"(?:^|[。；;!?！？:])[ \t\r]*$", re.MULTILINE)
_YEAR_AFTER_RE = re.compile(rf"(?:年|每年){_S}$")
_MONTH_AFTER_RE = re.compile(rf"月{_S}$")
_TIME_UNITS = {"天", "工作日", "月", "年", "周", "小时"}
_CIRCLED_BASES = ((0x2460, 0x2473), (0x2474, 0x2487), (0x2488, 0x249B), (0x2776, 0x277F))
_FOUR_PLACES = Decimal("0.0001")
_CN_DIGIT_VALUE = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"〇": 0, "两": 2}
_PHONE_DIGITS = 7  # a bare digit string this long is an identifier (phone, account), not an amount


@lru_cache(maxsize=16384)
def _cn_value(s: str) -> Decimal | None:
    """A Chinese numeral ("一千二百", "两万", "五点五") as a Decimal; None when it is not a valid numeral."""
    if not any(c in "零〇一二两三四五六七八九十" for c in s):
        return None  # "万", "百" alone are scale words, not numbers
    int_part, _, frac = s.partition("点")
    try:
        # cn2an raises assorted errors (ValueError, KeyError, IndexError) on malformed input; any of them
        # simply means "not a numeral" here.
        whole = Decimal(str(cn2an.cn2an(int_part.replace("〇", "零"), "normal"))) if int_part else Decimal(0)
    except Exception:
        return None
    if frac:
        # Digits after 点 are read one by one (五点零五 = 5.05), which cn2an would pass through float.
        if any(c not in _CN_DIGIT_VALUE for c in frac):
            return None
        whole += Decimal("0." + "".join(str(_CN_DIGIT_VALUE[c]) for c in frac))
    return whole


def _split_cn_scale(s: str) -> tuple[Decimal | None, Decimal | None]:
    """A Chinese numeral as (value, scale): "五十万" -> (50, 10000), so a range can lend its scale."""
    if len(s) > 1 and s[-1] in "万亿" and "万" not in s[:-1] and "亿" not in s[:-1] and "点" not in s:
        head = _cn_value(s[:-1])
        if head is not None:
            return head, _SCALES[s[-1]]
    return _cn_value(s), None


def _ar_value(s: str) -> Decimal:
    return Decimal(s.replace(",", ""))


def _times(value: Decimal, scale: Decimal | int | None) -> Decimal:
    """``value * scale`` exactly: the default context keeps 28 digits and would round a long amount."""
    with localcontext() as ctx:
        ctx.prec = max(28, len(value.as_tuple().digits) + 12)
        return value * (scale or 1)


def _fraction(num: Decimal, den: Decimal) -> Decimal | None:
    """num/den kept exact when it terminates (1/4 = 0.25), else rounded to 4 places (1/3 = 0.3333)."""
    if den == 0:
        return None
    with localcontext() as ctx:
        ctx.clear_flags()
        quotient = num / den
        inexact = ctx.flags[Inexact]
    return quotient.quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP) if inexact else quotient


def _denominator(s: str) -> Decimal | None:
    """The N of "N分之M": 百分之 -> 100, 千分之 -> 1000, 三分之 -> 3."""
    return _SCALES.get(s) or (Decimal(100) if s == "百" else None) or _cn_value(s)


@dataclass
class _Side:
    """One end of a possible range while it is being read."""

    value: Decimal
    scale: Decimal | None
    num_end: int
    unit: str | None
    unit_written: str
    end: int
    is_cn: bool


def _read_side(norm: str, i: int) -> _Side | None:
    m = _AR_NUM_RE.match(norm, i)
    if m:
        value = _ar_value(m["n"])
        scale = _SCALES[m["sc"]] if m["sc"] else None
        is_cn = False
    else:
        m = _CN_NUM_RE.match(norm, i)
        if not m:
            return None
        parsed, scale = _split_cn_scale(m.group())
        if parsed is None:
            return None
        value, is_cn = parsed, True
    num_end = m.end()
    unit, written, end = _read_unit(norm, num_end)
    return _Side(value, scale, num_end, unit, written, end, is_cn)


def _read_unit(norm: str, j: int) -> tuple[str | None, str, int]:
    """The canonical unit at norm[j:] (after optional spaces), the unit as written, and where it ends."""
    m = _UNIT_RE.match(norm, j)
    if not m:
        return None, "", j
    if m["yuan"]:
        per = m["per"]
        if per:
            key = _PER_STRIP.sub("", per)
            return "元/" + _PER_CANON.get(key, key), m.group().strip(), m.end()
        return "元", "元", m.end()
    if m["cur"]:
        return m["cur"], m["cur"], m.end()
    written = m["u"]
    return _UNIT_CANON.get(written, written), written, m.end()


class _Scanner:
    """One pass over one text; collects mentions in order."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.norm = _fold(text)
        self.out: list[NumberMention] = []
        self.last_item = -1  # the last "N." list number at a line start, to continue "1. 2. 3." lists

    def add(
        self,
        start: int,
        end: int,
        kind: str,
        value: Decimal,
        value_max: Decimal | None = None,
        unit: str = "",
        qualifier: str = "",
    ) -> None:
        self.out.append(
            NumberMention(value, value_max, unit, qualifier, self.text[start:end], start, end, kind)
        )

    def run(self) -> list[NumberMention]:
        norm = self.norm
        pos = 0
        while True:
            m = _MASTER.search(norm, pos)
            if m is None:
                break
            kind = m.lastgroup or ""
            start = m.start(kind)
            handler = getattr(self, "_on_" + kind)
            new_pos = handler(m, start)
            pos = max(new_pos, start + 1)  # always progress
        return self.out

    # --- non-rule kinds ---------------------------------------------------------------------------------
    def _on_item(self, m: re.Match[str], start: int) -> int:
        end = m.end("item")
        core = self.norm[start:end].rstrip("、.) \t")
        if self.norm[end - 1] == "." and core.isdigit():
            self.last_item = int(core)
        if core[:1].isdigit():
            levels = core.split(".")
            value = Decimal(core) if len(levels) <= 2 else Decimal(levels[0])  # "1.1.2" keeps its first level
        else:
            value = _cn_value(core) or Decimal(0)
        self.add(start, end, "item", value)
        return end

    def _on_pitem(self, m: re.Match[str], start: int) -> int:
        end = m.end()
        inner = self.norm[start + 1 : end - 1].strip()
        value = Decimal(inner) if inner.isdigit() else _cn_value(inner)
        self.add(start, end, "item", value if value is not None else Decimal(0))
        return end

    def _on_circ(self, m: re.Match[str], start: int) -> int:
        code = ord(self.norm[start])
        value = next(code - lo + 1 for lo, hi in _CIRCLED_BASES if lo <= code <= hi)
        self.add(start, start + 1, "item", Decimal(value))
        return start + 1

    def _on_doc(self, m: re.Match[str], start: int) -> int:
        d = _DOC_RE.match(self.norm, start)
        if d is None:  # cannot happen: the master matched the same shape
            return m.end()
        self.add(start, d.end(), "doc_number", Decimal(d["n"]))
        return d.end()

    def _on_yearbr(self, m: re.Match[str], start: int) -> int:
        self.add(start, m.end(), "date", Decimal(_NON_DIGIT_RE.sub("", m.group()) or 0))
        return m.end()

    def _date(self, start: int, end: int, y: int | None, mo: int | None, d: int | None) -> int:
        """A date's value packs its parts: 2022年3月1日 -> 20220301, 2022年 -> 2022, 12月31日 -> 1231."""
        value = 0
        for part, width in ((y, 0), (mo, 100), (d, 100)):
            if part is not None:
                value = value * width + part if width else part
        self.add(start, end, "date", Decimal(value))
        return end

    def _on_dsep(self, m: re.Match[str], start: int) -> int:
        d = _DSEP_RE.match(self.norm, start)
        if d is None:  # cannot happen: the master matched the same shape
            return m.end()
        mo, day = int(d["m"]), int(d["d"])
        if not (1 <= mo <= 12 and 1 <= day <= 31):
            return self._on_num(m, start)
        return self._date(start, m.end(), int(d["y"]), mo, day)

    def _on_dy(self, m: re.Match[str], start: int) -> int:
        d = _DY_RE.match(self.norm, start)
        if d is None:  # cannot happen: the master matched the same shape
            return m.end()
        mo = int(d["m"]) if d["m"] else None
        day = int(d["d"]) if d["d"] else None
        return self._date(start, d.end(), int(d["y"]), mo, day)

    def _on_dmd(self, m: re.Match[str], start: int) -> int:
        d = _DMD_RE.match(self.norm, start)
        if d is None:  # cannot happen: the master matched the same shape
            return m.end()
        return self._date(start, d.end(), None, int(d["m"]), int(d["d"]))

    def _on_dcy(self, m: re.Match[str], start: int) -> int:
        d = _DCY_RE.match(self.norm, start)
        if d is None:  # cannot happen: the master matched the same shape
            return m.end()
        year = int("".join(str(_CN_DIGIT_VALUE[c]) for c in d["y"]))
        mo = _cn_value(d["m"]) if d["m"] else None
        day = _cn_value(d["d"]) if d["d"] else None
        return self._date(start, d.end(), year, int(mo) if mo else None, int(day) if day else None)

    def _on_dcmd(self, m: re.Match[str], start: int) -> int:
        d = _DCMD_RE.match(self.norm, start)
        if d is None:  # cannot happen: the master matched the same shape
            return m.end()
        mo, day = _cn_value(d["m"]), _cn_value(d["d"])
        if mo is None or day is None:
            return m.end()
        return self._date(start, d.end(), None, int(mo), int(day))

    def _on_time(self, m: re.Match[str], start: int) -> int:
        """Clock times ("下午 4：00", "晚 8 时") are kind "date"; value is HHMM (4:00 -> 400)."""
        t = _TIME_RE.match(self.norm, start)
        if t is None:  # cannot happen: the master matched the same shape
            return m.end()
        self.add(start, m.end(), "date", Decimal(int(t["h"]) * 100 + int(t["mi"] or t["mi2"] or 0)))
        return m.end()

    def _on_phone(self, m: re.Match[str], start: int) -> int:
        self.add(start, m.end(), "other", Decimal(_NON_DIGIT_RE.sub("", m.group())))
        return m.end()

    def _on_ord(self, m: re.Match[str], start: int) -> int:
        o = _ORD_RE.match(self.norm, start)
        if o is None:
            return start + 1
        a = _number_word(o["a"])
        b = _number_word(o["b"]) if o["b"] else None
        if a is None or (o["b"] and b is None):
            return start + 1  # "第" + something cn2an rejects: let the digits be read on their own
        if o["w"]:
            word = o["w"].strip()
            if word == "号":  # 财政部令第 92 号
                self.add(start, o.end(), "doc_number", a, b)
            else:
                self.add(start, o.end(), "article", a, b, word)
            return o.end()
        unit, _written, unit_end = _read_unit(self.norm, o.end())
        if b is not None and unit in _TIME_UNITS:
            # "第 1-3 个工作日": a window of days is a rule (a deadline), so a quantity; 第 stays out of raw.
            num_start = o.start("a")
            self.add(num_start, unit_end, "quantity", a, b, unit)
            return unit_end
        if b is not None and unit is None:
            end = o.end("b")
        elif unit is not None:
            end = unit_end
        else:
            end = o.end("a")
        self.add(start, end, "ordinal", a, b, unit or "")
        return end

    # --- quantities ---------------------------------------------------------------------------------------
    def _on_frac(self, m: re.Match[str], start: int) -> int:
        f = _FRAC_RE.match(self.norm, start)
        if f is None:
            return m.end()
        num = _number_word(f["num"])
        den = _denominator(f["den"])
        if num is None or den is None:
            return m.end()
        if f["den"] == "百":
            value, unit = num, "%"
        else:
            value, unit = _fraction(num, den), ""
            if value is None:
                return f.end()
        return self._finish_quantity(start, f.end(), value, None, unit)

    def _on_afrac(self, m: re.Match[str], start: int) -> int:
        num, _, den = m.group().partition("/")
        if int(num) >= int(den):  # "3/1" is no fraction of a rule (a date, a ratio): read the numbers alone
            return self._on_num(m, start)
        value = _fraction(Decimal(num), Decimal(den))
        if value is None:
            return m.end()
        return self._finish_quantity(start, m.end(), value, None, "")

    def _on_cnq(self, m: re.Match[str], start: int) -> int:
        if self.norm.startswith("一", start) and self.norm[start - 1 : start] in ("上", "下"):
            return m.end()  # 下一年度, 上一个: "next/previous", not a count
        return self._on_num(m, start)

    def _on_num(self, m: re.Match[str], start: int) -> int:
        norm = self.norm
        short = _SHORT_SPLIT_RE.match(norm, start)
        if (
            short
            and int(short[1]) == self.last_item + 1
            and _AT_LINE_START_RE.search(norm, max(0, start - 8), start)
        ):
            # "2.50元" on the line after item "1.": item "2." and 50 元, not the decimal 2.50.
            self.last_item += 1
            self.add(start, short.end(), "item", Decimal(short[1]))
            return short.end()
        first = _read_side(norm, start)
        if first is None:
            return m.end()
        end = first.end
        value = _times(first.value, first.scale)
        value_max: Decimal | None = None
        unit = first.unit
        second = self._range_tail(first)
        if second is not None:
            scale2 = second.scale or 1
            scale1 = first.scale or (second.scale if first.unit is None else None) or 1
            value, value_max = _times(first.value, scale1), _times(second.value, scale2)
            unit = first.unit or second.unit
            end = second.end
        elif first.unit is None:
            if first.is_cn:
                return first.num_end  # a Chinese numeral without a unit is not a mention
            nxt = norm[first.num_end : first.num_end + 1]
            if (nxt.isascii() and nxt.isalpha()) or nxt == "/" or norm[start - 1 : start] == "/":
                # glued to Latin letters or slashes: a code, a path, a ratio (A4, 5G, /2022/): no amount
                return first.num_end
            hao = _HAO_RE.match(norm, first.num_end)
            if hao and first.scale is None:
                # "3号楼" is an identifier; "5号" after a month is a day of the month.
                kind = "date" if _MONTH_AFTER_RE.search(norm, 0, start) else "ordinal"
                self.add(start, hao.end(), kind, first.value)
                return hao.end()
            digits = norm[start : first.num_end]
            if first.scale is None:
                article = _ARTICLE_AFTER_RE.match(norm, first.num_end)
                if article:  # "第7、17条": the numbers of a list of articles
                    self.add(start, article.end(), "article", first.value, None, article.group().strip())
                    return article.end()
                if _ATTACHMENT_BEFORE_RE.search(norm, max(0, start - 4), start):
                    self.add(start, first.num_end, "ordinal", first.value)  # 附件1, 表2
                    return first.num_end
                plain = digits.replace(",", "")
                if "." not in plain and (len(plain) >= _PHONE_DIGITS or (len(plain) > 1 and plain[0] == "0")):
                    # Long digit strings and ones with a leading zero (0536, 007) are codes, not amounts.
                    self.add(start, first.num_end, "other", first.value)
                    return first.num_end
            if start > 0 and norm[start - 1] == "¥":
                # "¥1,200": the currency sign is the unit; it is part of what was written
                return self._finish_quantity(start - 1, first.end, value, None, "元")
        else:
            before = norm[max(0, start - 4) : start]
            # "每年3月", "3月底" name a month, "每月5日" a day of the month: dates, not durations.
            month_word = norm[end : end + 1] in ("底", "初", "末", "份", "中")
            is_int = _is_int(first.value)
            in_month_range = is_int and 1 <= first.value <= 12
            if (
                first.unit_written == "月"
                and in_month_range
                and (month_word or _YEAR_AFTER_RE.search(before))
            ):
                return self._date(start, end, None, int(first.value), None)
            if (
                first.unit_written == "日"
                and is_int
                and 1 <= first.value <= 31
                and _MONTH_AFTER_RE.search(before)
            ):
                return self._date(start, end, None, None, int(first.value))
        return self._finish_quantity(start, end, value, value_max, unit or "")

    def _range_tail(self, first: _Side) -> _Side | None:
        """The upper end of "1500-2400元", "500 至 1000 万元", "1000 元—10000 元", if there is one."""
        r = _RANGE_RE.match(self.norm, first.end)
        if r is None:
            return None
        second = _read_side(self.norm, r.end())
        if second is None:
            return None
        if first.unit is not None and second.unit is not None and first.unit != second.unit:
            return None
        if first.unit is not None and second.unit is None:
            return None  # "1000 元-2": the dash is not a range here
        if first.scale is not None and second.scale is None:
            return None  # "1万-2000元"
        if second.unit is None and (first.is_cn or second.is_cn):
            return None  # Chinese numerals need a unit
        if second.unit is None and not second.is_cn:
            digits = self.norm[r.end() : second.num_end].replace(",", "")
            if "." not in digits and len(digits) >= _PHONE_DIGITS:
                return None
        return second

    def _finish_quantity(
        self, start: int, end: int, value: Decimal, value_max: Decimal | None, unit: str
    ) -> int:
        """Attach qualifiers before/after and a per-phrase before, add the quantity, return the next pos."""
        norm = self.norm
        suffixes: list[str] = []
        pos = end
        while True:
            s = _SUFFIX_RE.match(norm, pos)
            if s is None:
                break
            if s["pq"] or s["bq"]:
                suffixes.append(s["pq"] or s["bq"])
            elif s["w"]:
                suffixes.append(s["w"])
            elif unit:  # "15 日内", "三个月内": 内 after a unit means 以内
                suffixes.append("以内")
            else:
                break
            pos = s.end()
        lookback = max(0, start - 12)
        p = _PREFIX_RE.search(norm, lookback, start)
        prefix_start = p.start() if p else start
        prefixes = [_PREFIX_CANON.get(w, w) for w in (p.groups() if p else ()) if w]
        if unit == "元" or not prefixes:
            per = _PER_PREFIX_RE.search(norm, max(0, prefix_start - 24), prefix_start)
            if per is not None:
                if unit == "元":
                    unit = _PER_PREFIX[per.group(1)]
                if not prefixes and not per.group(2).strip():
                    # "不超过每人每天260元": the qualifier stands before the per-phrase.
                    p2 = _PREFIX_RE.search(norm, max(0, per.start() - 12), per.start())
                    if p2:
                        prefixes = [_PREFIX_CANON.get(w, w) for w in p2.groups() if w]
        qualifier = "|".join(prefixes + suffixes)
        self.add(start, end, "quantity", value, value_max, unit, qualifier)
        return pos


def _is_int(value: Decimal) -> bool:
    return value == value.to_integral_value()


def _number_word(s: str) -> Decimal | None:
    if s[0].isdigit():
        try:
            return _ar_value(s)
        except InvalidOperation:
            return None
    return _cn_value(s)


def find_numbers(text: str) -> list[NumberMention]:
    """Every numeric mention of ``text``, sorted by start, spans never overlapping."""
    return _Scanner(text).run()


def rule_numbers(text: str) -> list[NumberMention]:
    """Only the rule numbers (kind "quantity") of ``text``: what goes into the fact ledger."""
    return [m for m in find_numbers(text) if m.kind == "quantity"]


_PARSE_AR_RE = re.compile(rf"(?P<n>{_AR})(?P<sc>[万亿])?%?")
_PARSE_PCT_RE = re.compile(rf"百分之(?P<n>{_AR}|{_CNNUM})")
_PARSE_FRAC_RE = re.compile(rf"(?P<den>{_CNRUN})分之(?P<n>{_AR}|{_CNNUM})")
_PARSE_CN_RE = re.compile(_CNNUM)


def parse_numeral(s: str) -> Decimal | None:
    """A single numeral ("1,200", "１２００", "8.8", "一千二百", "两万", "三分之一", "百分之十") as a Decimal.

    Also accepts a trailing 万/亿 scale ("5万" -> 50000) and a trailing % ("20%" -> 20, like 百分之二十).
    None when ``s`` is not exactly one numeral ("1 200", "abc", "").
    """
    s = _fold(s.strip())
    if not s:
        return None
    if m := _PARSE_AR_RE.fullmatch(s):
        if m["sc"] and s.endswith("%"):
            return None
        return _times(_ar_value(m["n"]), _SCALES[m["sc"]] if m["sc"] else None)
    if m := _PARSE_PCT_RE.fullmatch(s):
        return _number_word(m["n"])
    if m := _PARSE_FRAC_RE.fullmatch(s):
        num, den = _number_word(m["n"]), _denominator(m["den"])
        return None if num is None or den is None else _fraction(num, den)
    if _PARSE_CN_RE.fullmatch(s):
        return _cn_value(s)
    return None


def canonical(value: Decimal) -> str:
    """A Decimal as a plain decimal string: no exponent, no trailing zeros ("1200", "0.5", "0.3333")."""
    if not value.is_finite():
        return str(value)
    with localcontext() as ctx:
        ctx.prec = max(28, len(value.as_tuple().digits))  # normalize() rounds to the context's precision
        text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


_MATCH_TOLERANCE = Decimal("0.00005")  # half a unit in the 4th decimal place: 0.3333 matches 1/3


_NUMBER_CHAR = re.compile(rf"[\d０-９{CN_NUMERALS}]")


def first_number_char(text: str) -> int:
    """Index of the first character that could be part of a number (digit, full-width digit, Chinese
    numeral), or -1. Streaming shows text up to here and holds the rest until the answer has been checked."""
    found = _NUMBER_CHAR.search(text)
    return found.start() if found else -1


def values_match(a: Decimal, b: Decimal) -> bool:
    """Whether two values are the same number, tolerating 4-decimal rounding of fractions (0.3333 ~ 1/3)."""
    if not (a.is_finite() and b.is_finite()):
        return False
    if canonical(a) == canonical(b):
        return True
    return abs(a - b) <= _MATCH_TOLERANCE


def range_key(value: Decimal, value_max: Decimal | None) -> tuple[str, str | None]:
    """A value (and range end) as canonical strings, for comparing a stated number with another exactly."""
    return canonical(value), canonical(value_max) if value_max is not None else None


# 千 is left out: in what was written it is mostly a digit place (一千二百元), and "5千元" is rare.
_WRITTEN_SCALES = {k: _SCALES[k] for k in ("万", "亿")}
_NUMERAL_TOKEN = re.compile(rf"\d+(?:\.\d+)?|[{CN_NUMERALS}]+")


def readings(mention: NumberMention) -> set[tuple[str, str | None]]:
    """(value, range end) pairs a mention may be read as: its canonical value, and the number as written
    before 万/亿 scaling (10万元 reads as 100000 and as 10). A range reads only as a range. A date also
    reads as each numeral written in it (12月31日: 1231, 12 and 31; 下午4:00: 400 and 4)."""
    found = {range_key(mention.value, mention.value_max)}
    for mark, scale in _WRITTEN_SCALES.items():
        if mark in mention.raw:
            found.add(
                range_key(mention.value / scale, mention.value_max / scale if mention.value_max else None)
            )
    if mention.kind == "date":
        for token in _NUMERAL_TOKEN.findall(_fold(mention.raw)):
            value = parse_numeral(token)
            if value is not None:
                found.add((canonical(value), None))
    return found


def units_agree(a: str, b: str) -> bool:
    """Whether two canonical units name the same thing where both are given: the main unit decides, so
    100元/人·天 agrees with 元 but 5元 does not with 5天 ("" agrees with anything)."""
    return not (a and b and a.split("/")[0] != b.split("/")[0])
