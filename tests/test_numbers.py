"""The one number parser (tasks/ingest/numbers.py): table tests from real-looking and real rule sentences, and
property-based tests (hypothesis) for Chinese numerals, number formats and robustness on arbitrary text."""

from __future__ import annotations

import re
from decimal import Decimal

import cn2an
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.ingest.numbers import (
    KINDS,
    NumberMention,
    canonical,
    find_numbers,
    parse_numeral,
    rule_numbers,
    values_match,
)

Row = tuple[str, str, str, str | None, str, str]  # kind, raw, value, value_max, unit, qualifier


def _rows(text: str) -> list[Row]:
    """All mentions of ``text`` as comparable tuples, checking the span invariant on the way."""
    rows = []
    for m in find_numbers(text):
        assert m.raw == text[m.start : m.end]
        rows.append(
            (
                m.kind,
                m.raw,
                m.value_str(),
                None if m.value_max is None else canonical(m.value_max),
                m.unit,
                m.qualifier,
            )
        )
    return rows


def _one_rule(text: str) -> NumberMention:
    rules = rule_numbers(text)
    assert len(rules) == 1, [(m.raw, m.kind) for m in find_numbers(text)]
    m = rules[0]
    assert m.raw == text[m.start : m.end]
    return m


def _check(text: str, raw: str, value: str, value_max: str | None, unit: str, qualifier: str) -> None:
    m = _one_rule(text)
    assert (m.raw, m.value_str(), m.value_max, m.unit, m.qualifier, m.kind) == (
        raw,
        value,
        None if value_max is None else Decimal(value_max),
        unit,
        qualifier,
        "quantity",
    )
    assert m.is_rule


# --- Arabic numbers: full-width, separators, decimals, PDF spaces -------------------------------------------
ARABIC = [
    ("住宿费标准为每间１２０元，超出部分自理。", "１２０元", "120", None, "元", ""),
    ("机票折扣不低于８０％。", "８０％", "80", None, "%", "不低于"),
    ("单张发票金额在1,200 元以上的应附清单。", "1,200 元", "1200", None, "元", "以上"),
    ("合同金额10,000.00元的由院长审批。", "10,000.00元", "10000", None, "元", ""),
    ("票价一般不高于全价经济舱票价的8.8 折。", "8.8 折", "8.8", None, "折", ""),
    ("管理费按到账经费的0.5%提取。", "0.5%", "0.5", None, "%", ""),
    ("会议期间按 1 元标准收取资料费。", "1 元", "1", None, "元", ""),
    ("连续出差时间超过 30 天的，应当备案。", "30 天", "30", None, "天", "超过"),
    ("达到 1000 元订立合同限额。", "1000 元", "1000", None, "元", "达到"),
    ("金额在 10000 元以上的应附合同。", "10000 元", "10000", None, "元", "以上"),
    ("且不得超过 1 万元/人月；", "1 万元/人月", "10000", None, "元/人·月", "不超过"),
    ("本科生劳务费按 25.50 元计发。", "25.50 元", "25.5", None, "元", ""),
    ("补助标准为１，２００元。", "２００元", "200", None, "元", ""),  # full-width comma is punctuation
]


@pytest.mark.parametrize(("text", "raw", "value", "value_max", "unit", "qualifier"), ARABIC)
def test_arabic_numbers(
    text: str, raw: str, value: str, value_max: str | None, unit: str, qualifier: str
) -> None:
    if text.startswith("补助标准为１，"):
        # "１，２００" reads as 1 then 200: a full-width comma is Chinese punctuation, not a separator.
        assert [r[1] for r in _rows(text)] == ["１", "２００元"]
        return
    _check(text, raw, value, value_max, unit, qualifier)


# --- Chinese numerals -------------------------------------------------------------------------------------
CHINESE = [
    ("市内交通费每人每天八十元。", "八十元", "80", None, "元/人·天", ""),
    ("硕士研究生助研劳务费每人每月不超过一千二百元。", "一千二百元", "1200", None, "元/人·月", "不超过"),
    ("同一品目年度累计采购金额达到两万元以上的，应当集中采购。", "两万元", "20000", None, "元", "达到|以上"),
    ("出差人员应当在出差结束后十五日内报销。", "十五日", "15", None, "天", "以内"),
    ("项目负责人应在三个月内办理决算手续。", "三个月", "3", None, "月", "以内"),
    ("结余资金在五年内统筹使用。", "五年", "5", None, "年", "以内"),
    ("财务处对在研项目开展检查，每年一次。", "一次", "1", None, "次", ""),
    ("工作人员不超过参会人员的百分之十。", "百分之十", "10", None, "%", ""),
    ("陪餐人数不超过接待对象人数的三分之一。", "三分之一", "0.3333", None, "", ""),
    ("住宿费标准可以上浮百分之二十。", "百分之二十", "20", None, "%", ""),
    ("会期不超过三分之二个工作日。", "三分之二", "0.6667", None, "", ""),
    ("管理费不超过千分之五。", "千分之五", "0.005", None, "", "不超过"),
    ("管理费按四分之一计提。", "四分之一", "0.25", None, "", ""),
    ("利率为百分之零点五。", "百分之零点五", "0.5", None, "%", ""),
    ("伙食补助费按往返各一天计发。", "一天", "1", None, "天", ""),
    ("每人次可购买交通意外保险一份。", "一份", "1", None, "份", ""),
    ("同性别两人以上出差的，原则上合住。", "两人", "2", None, "人", "以上"),
    ("同一经办人每年遗失票据超过两次的，不再受理。", "两次", "2", None, "次", "超过"),
    ("使用年限在一年以上的设备。", "一年", "1", None, "年", "以上"),
    ("培训时间为三至五天。", "三至五天", "3", "5", "天", ""),
    ("劳务费每人每月不超过二十五万元。", "二十五万元", "250000", None, "元/人·月", "不超过"),
]


@pytest.mark.parametrize(("text", "raw", "value", "value_max", "unit", "qualifier"), CHINESE)
def test_chinese_numerals(
    text: str, raw: str, value: str, value_max: str | None, unit: str, qualifier: str
) -> None:
    if raw == "三分之二":  # "个工作日" after a fraction: the fraction alone is the mention
        m = next(x for x in rule_numbers(text) if x.raw == raw)
        assert (m.value_str(), m.unit) == (value, unit)
        return
    _check(text, raw, value, value_max, unit, qualifier)


@pytest.mark.parametrize(
    "text",
    [
        "学院实行统一领导、分级管理。",
        "一般不予报销差旅费。",
        "一律不予报销住宿费。",
        "报销人名称一致。",
        "进一步加强学院财务管理。",
        "有下列行为之一的，追究责任。",
        "项目资金不得与其他资金混在一起。",
        "需要一定比例的配套经费。",
        "唯一的例外是公务接待。",
        "一切费用由个人承担。",
        "一并报送财务处。",
        "一经发现，严肃处理。",
        "发放一次性补助。",
        "实行“三重一大”报批制度。",
        "一类人员、二类人员、三类人员分别执行。",
        "乘坐高铁一等座、二等座或轮船二等舱。",
        "年度剩余资金可结转下一年度继续使用。",
        "经费负责人“一支笔”审批。",
        "缺一不予报销。",
        "每一项支出都应当真实。",
        "三不超原则。",
        "单位：万元",
    ],
)
def test_chinese_words_with_numeral_characters_are_not_numbers(text: str) -> None:
    assert _rows(text) == []


def test_bare_chinese_numerals_without_unit_are_not_mentions() -> None:
    assert _rows("其中八十由学校承担，二十由学院承担。") == []


# --- 万/亿 scaling and ranges -----------------------------------------------------------------------------
SCALE_AND_RANGES = [
    ("业务部门支付或预付 5 万元以上的项目报党委会研究。", "5 万元", "50000", None, "元", "以上"),
    ("合同金额为20–50万的，由科学技术研究院审批。", "20–50万", "200000", "500000", "", ""),
    ("合同金额为20–50万元的，由科学技术研究院审批。", "20–50万元", "200000", "500000", "元", ""),
    ("项目总预算为1.5亿元。", "1.5亿元", "150000000", None, "元", ""),
    ("500 至 1000 万元的部分为 15%。", "500 至 1000 万元", "5000000", "10000000", "元", ""),
    ("标准为1500-2400元。", "1500-2400元", "1500", "2400", "元", ""),
    ("标准为1500～2400元。", "1500～2400元", "1500", "2400", "元", ""),
    ("标准为1500~2400 元。", "1500~2400 元", "1500", "2400", "元", ""),
    ("金额 1000 元—10000 元内工程项目的应附询价单。", "1000 元—10000 元", "1000", "10000", "元", "以内"),
    ("金额在1000元到5000元之间。", "1000元到5000元", "1000", "5000", "元", ""),
    ("超过 50 万至 100 万元的部分按照 2%的比例核定。", "50 万至 100 万元", "500000", "1000000", "元", "超过"),
    ("20 万及以下的部分按照8%的比例核定。", "20 万", "200000", None, "", "及以下"),
    ("咨询费按300～500元/人次发放。", "300～500元/人次", "300", "500", "元/人·次", ""),
    ("专家咨询费标准为 900-1500 元／人天（税后）。", "900-1500 元／人天", "900", "1500", "元/人·天", ""),
    ("资产总额 3 亿元。", "3 亿元", "300000000", None, "元", ""),
    ("小额采购不超过5千元。", "5千元", "5000", None, "元", "不超过"),
    ("表中数据为1500-2400。", "1500-2400", "1500", "2400", "", ""),
]


@pytest.mark.parametrize(("text", "raw", "value", "value_max", "unit", "qualifier"), SCALE_AND_RANGES)
def test_scaling_and_ranges(
    text: str, raw: str, value: str, value_max: str | None, unit: str, qualifier: str
) -> None:
    m = [x for x in rule_numbers(text) if x.raw == raw]
    assert len(m) == 1, _rows(text)
    got = m[0]
    assert (got.value_str(), got.value_max, got.unit, got.qualifier) == (
        value,
        None if value_max is None else Decimal(value_max),
        unit,
        qualifier,
    )


def test_units_of_a_range_must_agree() -> None:
    assert [r[1] for r in _rows("出差3天至5人。")] == ["3天", "5人"]


# --- percentages -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("间接费用不超过直接费用的20%。", "20%"),
        ("间接费用不超过直接费用的20％。", "20％"),
        ("间接费用不超过直接费用的百分之二十。", "百分之二十"),
        ("间接费用不超过直接费用的２０％。", "２０％"),
    ],
)
def test_percentages(text: str, raw: str) -> None:
    m = _one_rule(text)
    assert (m.raw, m.value_str(), m.unit) == (raw, "20", "%")


# --- qualifiers ------------------------------------------------------------------------------------------
QUALIFIER_CASES = [
    ("住宿费不超过500元。", "不超过"),
    ("讲课费不低于300元。", "不低于"),
    ("票价不高于800元。", "不高于"),
    ("连续乘车超过12小时。", "超过"),
    ("金额低于1000元的不需审批。", "低于"),
    ("票价高于800元的需说明。", "高于"),
    ("出差不足1天的按实际计算。", "不足"),
    ("讲课费最高500元。", "最高"),
    ("会期最多3天。", "最多"),
    ("至少3人参加。", "至少"),
    ("工作满1年的可以申请。", "满"),
    ("采购金额达到5万元的须招标。", "达到"),
    ("采购金额达 5万元的须招标。", ""),  # 达 alone is not 达到
    ("5万元以上的项目报党委会。", "以上"),
    ("1000元以下的由负责人审批。", "以下"),
    ("接待对象在10人以内的。", "以内"),
    ("20万元及以上的项目。", "及以上"),
    ("20万元及以下的项目。", "及以下"),
    ("单价1000元（含）以上的设备。", "含|以上"),
    ("单价1000元(含)以上的设备。", "含|以上"),
    ("单价1000元（不含）以上的设备。", "不含|以上"),
    ("单价1000元含以上的设备。", "含|以上"),
    ("每学时最高不超过500元。", "最高|不超过"),
    ("不得超过 1 万元的部分。", "不超过"),
    ("不得低于 60%。", "不低于"),
    ("住宿费不超过每人每天260元。", "不超过"),
    ("以外地区按1000元以外的标准。", ""),  # 以外 is not a qualifier
]


@pytest.mark.parametrize(("text", "qualifier"), QUALIFIER_CASES)
def test_qualifiers(text: str, qualifier: str) -> None:
    assert _one_rule(text).qualifier == qualifier


def test_not_enough_day_both_numbers() -> None:
    assert [r[5] for r in _rows("出差不足1天的按1天计算。")] == ["不足", ""]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000 元（含 1000 元）以下", [("1000 元", "含|以下")]),
        ("1000 元（含）及以上", [("1000 元", "含|及以上")]),
        ("10000 元以下（含 10000 元）", [("10000 元", "以下|含")]),
        ("1000 元以上 10000 元（含 10000 元）以下", [("1000 元", "以上"), ("10000 元", "含|以下")]),
        ("5 万元以下（含 5 万元）项目进行内部审计", [("5 万元", "以下|含")]),
        ("1000 元以上（含 1000 元）由院长签批", [("1000 元", "以上|含")]),
        ("10 万元（含本数）以上", [("10 万元", "含|以上")]),
    ],
)
def test_parenthetical_restatement_is_absorbed(text: str, expected: list[tuple[str, str]]) -> None:
    rows = _rows(text)
    assert [(r[1], r[5]) for r in rows] == expected
    assert all(r[0] == "quantity" for r in rows)
    assert rows[0][2] == re.sub(r"\D", "", expected[0][0]) or "万" in expected[0][0]


# --- units -----------------------------------------------------------------------------------------------
UNIT_CASES = [
    ("100元/人·天", "元/人·天"),
    ("100元/人天", "元/人·天"),
    ("100元/人/天", "元/人·天"),
    ("100元／人·天", "元/人·天"),
    ("100元/天·人", "元/人·天"),
    ("100元/人•天", "元/人·天"),
    ("100元/人.天", "元/人·天"),
    ("100 元 / 人 · 天", "元/人·天"),
    ("40元/人·餐", "元/人·餐"),
    ("2000元/人·月", "元/人·月"),
    ("2000元/人月", "元/人·月"),
    ("300元/人·次", "元/人·次"),
    ("300元/人次", "元/人·次"),
    ("500元/人", "元/人"),
    ("80元/天", "元/天"),
    ("200元/次", "元/次"),
    ("300元/月", "元/月"),
    ("1000元/年", "元/年"),
    ("2元/公里", "元/公里"),
    ("100元/小时", "元/小时"),
    ("400元/间·天", "元/间·天"),
    ("400元/间夜", "元/间·天"),
    ("30天", "天"),
    ("15日", "天"),
    ("5个工作日", "工作日"),
    ("5工作日", "工作日"),
    ("3个月", "月"),
    ("3月", "月"),
    ("3年", "年"),
    ("2周", "周"),
    ("10人", "人"),
    ("20人次", "人次"),
    ("3次", "次"),
    ("500公里", "公里"),
    ("6小时", "小时"),
    ("8.8折", "折"),
    ("20%", "%"),
    ("2个", "个"),
    ("3项", "项"),
    ("1份", "份"),
    ("10页", "页"),
    ("5名", "名"),
    ("2张", "张"),
    ("1台", "台"),
    ("3件", "件"),
    ("60岁", "岁"),
    ("60周岁", "岁"),
    ("32学时", "学时"),
    ("4课时", "课时"),
    ("20平方米", "平方米"),
    ("5 万元", "元"),
    ("1.5 亿元", "元"),
    ("500", ""),
]


@pytest.mark.parametrize(("written", "unit"), UNIT_CASES)
def test_units(written: str, unit: str) -> None:
    text = f"标准为{written}，超出部分自理。"
    m = _one_rule(text)
    assert (m.raw, m.unit) == (written, unit)


def test_words_that_start_like_units_are_not_units() -> None:
    assert _rows("支付3人民币")[0][4] == ""  # 人民币 is not 人
    assert _rows("计提5折旧")[0][4] == ""
    assert _rows("申报2项目")[0][4] == ""


PER_CASES = [
    ("出差人员每人每天100元包干。", "100元", "元/人·天", ""),
    ("工作餐标准为每人每餐40元。", "40元", "元/人·餐", ""),
    ("劳务费每人每月2000元。", "2000元", "元/人·月", ""),
    ("专家咨询费每人次300元。", "300元", "元/人·次", ""),
    ("带队老师补助每天50元。", "50元", "元/天", ""),
    ("每次200元。", "200元", "元/次", ""),
    ("慰问金每人500元。", "500元", "元/人", ""),
    ("住宿费每人每天不超过100元。", "100元", "元/人·天", "不超过"),
    ("每人每天补助 100 元。", "100 元", "元/人·天", ""),
    ("每人每天发给伙食补助费 10 元。", "10 元", "元/人·天", ""),
    ("按照每公里0.8元的标准计发。", "0.8元", "元/公里", ""),
    ("劳务费按每小时不低于25元计发。", "25元", "元/小时", "不低于"),
    ("每学时一般不超过1500元。", "1500元", "元/学时", "不超过"),
    ("每人每天80元/天。", "80元/天", "元/天", ""),  # the number's own per-unit wins
    ("每人每天，另发放100元。", "100元", "元", ""),  # punctuation ends the per-phrase
    ("每人每天乘车不超过3小时。", "3小时", "小时", "不超过"),  # per-phrases only apply to 元
]


@pytest.mark.parametrize(("text", "raw", "unit", "qualifier"), PER_CASES)
def test_per_phrases_before_the_number(text: str, raw: str, unit: str, qualifier: str) -> None:
    m = _one_rule(text)
    assert (m.raw, m.unit, m.qualifier) == (raw, unit, qualifier)


# --- kinds that are not rule numbers ---------------------------------------------------------------------
KIND_CASES = [
    ("根据西校〔2022〕74号文件执行。", "〔2022〕74号", "doc_number", "74"),
    ("参照鲁财行[2014]4 号执行。", "[2014]4 号", "doc_number", "4"),
    ("参照鲁财行〔2015〕58号执行。", "〔2015〕58号", "doc_number", "58"),
    ("参照财教〔2021〕 2号执行。", "〔2021〕 2号", "doc_number", "2"),
    ("参照[2014] 4号执行。", "[2014] 4号", "doc_number", "4"),
    ("参照国办发〔2016〕50号执行。", "〔2016〕50号", "doc_number", "50"),
    ("参照鲁财行【2017】27 号执行。", "【2017】27 号", "doc_number", "27"),
    ("参照(财教〔2012〕488 号)执行。", "〔2012〕488 号", "doc_number", "488"),
    ("参照财政部令第 92 号执行。", "第 92 号", "doc_number", "92"),
    ("按本办法第二十条执行。", "第二十条", "article", "20"),
    ("按本办法第3条执行。", "第3条", "article", "3"),
    ("见第三章。", "第三章", "article", "3"),
    ("见第一节。", "第一节", "article", "1"),
    ("见第二款。", "第二款", "article", "2"),
    ("见第四项。", "第四项", "article", "4"),
    ("见第 12 条。", "第 12 条", "article", "12"),
    ("一、总则", "一、", "item", "1"),
    ("（三）附则", "（三）", "item", "3"),
    ("(3)附则", "(3)", "item", "3"),
    ("2.附则", "2.", "item", "2"),
    ("2．附则", "2．", "item", "2"),
    ("3、附则", "3、", "item", "3"),
    ("1）附则", "1）", "item", "1"),
    ("①附则", "①", "item", "1"),
    ("1.1 总则", "1.1", "item", "1.1"),
    ("自2022年3月1日起施行。", "2022年3月1日", "date", "20220301"),
    ("于2022 年 3 月印发。", "2022 年 3 月", "date", "202203"),
    ("于2014年印发。", "2014年", "date", "2014"),
    ("于2022-03-01印发。", "2022-03-01", "date", "20220301"),
    ("于2022.3.1印发。", "2022.3.1", "date", "20220301"),
    ("最长不得超过当年的 12 月 31 日。", "12 月 31 日", "date", "1231"),
    ("每年 12 月 31 日前完成清理。", "12 月 31 日", "date", "1231"),
    ("自2023年1月1日起施行。", "2023年1月1日", "date", "20230101"),
    ("自二〇二三年起施行。", "二〇二三年", "date", "2023"),
    ("于三月十五日前报送。", "三月十五日", "date", "315"),
    ("每年3月报送。", "3月", "date", "3"),
    ("每月5日前报送。", "5日", "date", "5"),
    ("报销业务截止下午 4：00。", "4：00", "date", "400"),
    ("在晚 8 时至次日晨 7 时期间乘车。", "8 时", "date", "800"),
    ("排名第一。", "第一", "ordinal", "1"),
    ("第二次申请。", "第二次", "ordinal", "2"),
    ("获得第1名。", "第1名", "ordinal", "1"),
    ("委托第三方审计。", "第三", "ordinal", "3"),
    ("每月第一个工作日为结账时间。", "第一个工作日", "ordinal", "1"),
    ("地址为3号楼。", "3号", "ordinal", "3"),
    ("联系电话0536-8888888。", "0536-8888888", "other", "5368888888"),
    ("联系电话13912345678。", "13912345678", "other", "13912345678"),
    ("银行账号6222021234567。", "6222021234567", "other", "6222021234567"),
]


@pytest.mark.parametrize(("text", "raw", "kind", "value"), KIND_CASES)
def test_non_rule_kinds(text: str, raw: str, kind: str, value: str) -> None:
    mentions = find_numbers(text)
    hits = [m for m in mentions if m.raw == raw]
    assert len(hits) == 1, _rows(text)
    m = hits[0]
    assert (m.kind, m.value_str()) == (kind, value)
    assert not m.is_rule
    assert m.raw == text[m.start : m.end]


@pytest.mark.parametrize(
    "text",
    [
        "按本办法第二十条执行。",
        "参照国办发〔2016〕50号执行。",
        "自2023年1月1日起施行。",
        "一、总则",
        "排名第一。",
    ],
)
def test_non_rule_kinds_stay_out_of_rule_numbers(text: str) -> None:
    assert find_numbers(text)
    assert rule_numbers(text) == []


def test_durations_in_years_are_quantities_but_calendar_years_are_dates() -> None:
    assert [(r[0], r[2], r[4]) for r in _rows("结余资金3年内使用，五年后收回，10 年期满；2014年印发。")] == [
        ("quantity", "3", "年"),
        ("quantity", "5", "年"),
        ("quantity", "10", "年"),
        ("date", "2014", ""),
    ]


def test_bare_arabic_numbers_are_quantities_without_unit() -> None:
    assert _rows("500 400 300") == [
        ("quantity", "500", "500", None, "", ""),
        ("quantity", "400", "400", None, "", ""),
        ("quantity", "300", "300", None, "", ""),
    ]


def test_numbers_glued_to_latin_letters_are_codes() -> None:
    assert _rows("使用A4纸和5G网络") == []


# --- item numbering glued to numbers (real PDF text) -----------------------------------------------------
ITEM_GLUE = [
    (
        "1.1000 元（含 1000 元）以下不再填写《经费审批表》。",
        [("item", "1.", "1", None, "", ""), ("quantity", "1000 元", "1000", None, "元", "含|以下")],
    ),
    (
        "2.1000 元以上 10000 元（含 10000 元）以下由职能部门负责人签字",
        [
            ("item", "2.", "2", None, "", ""),
            ("quantity", "1000 元", "1000", None, "元", "以上"),
            ("quantity", "10000 元", "10000", None, "元", "含|以下"),
        ],
    ),
    (
        "3.10000 元以上由职能部门负责人签字",
        [("item", "3.", "3", None, "", ""), ("quantity", "10000 元", "10000", None, "元", "以上")],
    ),
    (
        "审批如下：1.1000 元以下由负责人审批；2.1000 元以上由院长审批。",
        [
            ("item", "1.", "1", None, "", ""),
            ("quantity", "1000 元", "1000", None, "元", "以下"),
            ("item", "2.", "2", None, "", ""),
            ("quantity", "1000 元", "1000", None, "元", "以上"),
        ],
    ),
    ("票价不高于全价票的8.8 折。", [("quantity", "8.8 折", "8.8", None, "折", "")]),
    ("1.5亿元的项目", [("quantity", "1.5亿元", "150000000", None, "元", "")]),
    (
        "1.定期托收\n2.50元/天以下",
        [
            ("item", "1.", "1", None, "", ""),
            ("item", "2.", "2", None, "", ""),
            ("quantity", "50元/天", "50", None, "元/天", "以下"),
        ],
    ),
    ("说明 1.1000 元", [("quantity", "1.1000 元", "1.1", None, "元", "")]),  # mid-sentence: a decimal
]


@pytest.mark.parametrize(("text", "expected"), ITEM_GLUE)
def test_item_numbers_glued_to_amounts(text: str, expected: list[Row]) -> None:
    assert _rows(text) == expected


# --- exact sentences from the real corpus (../shared/corpus/text) ----------------------------------------
CORPUS_SENTENCES = [
    (
        "此类借款应在当次业务完成之日起 15 日内办理相关报销还款手续，超期不办理报销、还款手续，"
        "又未能说明原因，财务处将不再办理其他借款，并从借款人工资或津贴中扣取借款，直到还清为止。",
        [("quantity", "15 日", "15", None, "天", "以内")],
    ),
    (
        "所有预付款原则上应在相关业务办理后的 15 日内用发票冲账，特殊情况除需提供说明，"
        "最长不得超过当年的 12 月 31 日。",
        [("quantity", "15 日", "15", None, "天", "以内"), ("date", "12 月 31 日", "1231", None, "", "")],
    ),
    (
        "业务部门支付或预付 5 万元以上的项目报党委会研究，按会议纪要办理报销和支付。"
        "大额资金支出超预算金额10%的项目，须经党委会研究讨论决定。",
        [("quantity", "5 万元", "50000", None, "元", "以上"), ("quantity", "10%", "10", None, "%", "")],
    ),
    (
        "金额 1000 元—10000 元内工程项目的应附项目询价单、决算单、验收单；"
        "金额 10000 元以上的应附合同、审计报告、公开招标标书及中标通知。",
        [
            ("quantity", "1000 元—10000 元", "1000", "10000", "元", "以内"),
            ("quantity", "10000 元", "10000", None, "元", "以上"),
        ],
    ),
    (
        "第十七条  各部门所购固定资产，凭购物发票、合同（金额 1 万元以上的）到资产管理处办理"
        "相关资产验收手续，履行相关审批程序后到财务处办理报销。",
        [("article", "第十七条", "17", None, "条", ""), ("quantity", "1 万元", "10000", None, "元", "以上")],
    ),
    (
        "8.购买固定资产原则上要提供增值税专用发票，单件金额达到 1000 元（含）及以上的，"
        "应到资产管理处办理相关手续后方可报销。",
        [("item", "8.", "8", None, "", ""), ("quantity", "1000 元", "1000", None, "元", "达到|含|及以上")],
    ),
    (
        "出差人员的伙食补助费，按出差自然（日历）天数实行定额包干，每人每天补助 100 元。"
        "其中，潍坊滨海区、峡山区每人每天补助 50 元。",
        [
            ("quantity", "100 元", "100", None, "元/人·天", ""),
            ("quantity", "50 元", "50", None, "元/人·天", ""),
        ],
    ),
    (
        "出差人员在晚 8 时至次日晨 7 时期间乘车时间 6 小时以上，或连续乘车超过 12 小时，"
        "原则上乘坐全列软席列车软座，经单位领导批准，可以乘坐软卧，按照软卧车票报销。",
        [
            ("date", "8 时", "800", None, "", ""),
            ("date", "7 时", "700", None, "", ""),
            ("quantity", "6 小时", "6", None, "小时", "以上"),
            ("quantity", "12 小时", "12", None, "小时", "超过"),
        ],
    ),
    (
        "第一条 为了进一步加强和规范学院差旅费管理，参照《山东省省直机关差旅费管理办法》"
        "（鲁财行[2014]4 号）、"
        "《关于<山东省省直机关差旅费管理办法>有关问题的补充的通知》（鲁财行[2015]58 号）、"
        "《潍坊市市直机关差旅费管理办法》（潍财行[2014]6 号），结合学院实际情况，特制定本办法。",
        [
            ("article", "第一条", "1", None, "条", ""),
            ("doc_number", "[2014]4 号", "4", None, "", ""),
            ("doc_number", "[2015]58 号", "58", None, "", ""),
            ("doc_number", "[2014]6 号", "6", None, "", ""),
        ],
    ),
    (
        "5 万元以下（含 5 万元）项目进行学院内部审计或委托审计，5 万元以上项目由监察审计室委托第三方审计。",
        [
            ("quantity", "5 万元", "50000", None, "元", "以下|含"),
            ("quantity", "5 万元", "50000", None, "元", "以上"),
            ("ordinal", "第三", "3", None, "", ""),
        ],
    ),
    (
        "会议伙食费实行定额管理，院内不超过 70 元/人天，院外不超过 110元/人天，其它费用据实报销。",
        [
            ("quantity", "70 元/人天", "70", None, "元/人·天", "不超过"),
            ("quantity", "110元/人天", "110", None, "元/人·天", "不超过"),
        ],
    ),
    (
        "高级专业技术职称人员的专家咨询费标准为 1500-2400 元／人天（税后）；",
        [("quantity", "1500-2400 元／人天", "1500", "2400", "元/人·天", "")],
    ),
    (
        "500 万元以下的部分为20%，500 万元至 1000 万元的部分为 15%，1000 万元以上的部分为 13%，"
        "软科学研究项目和软件开发类项目 40%。",
        [
            ("quantity", "500 万元", "5000000", None, "元", "以下"),
            ("quantity", "20%", "20", None, "%", ""),
            ("quantity", "500 万元至 1000 万元", "5000000", "10000000", "元", ""),
            ("quantity", "15%", "15", None, "%", ""),
            ("quantity", "1000 万元", "10000000", None, "元", "以上"),
            ("quantity", "13%", "13", None, "%", ""),
            ("quantity", "40%", "40", None, "%", ""),
        ],
    ),
    (
        "20 万及以下的部分按照8%的比例核定；超过 20 万元至 50 万元的部分按照 5%的比例核定；"
        "超过 50 万至 100 万元的部分按照 2%的比例核定；超过 100 万元的部分按照 1%比例核定。",
        [
            ("quantity", "20 万", "200000", None, "", "及以下"),
            ("quantity", "8%", "8", None, "%", ""),
            ("quantity", "20 万元至 50 万元", "200000", "500000", "元", "超过"),
            ("quantity", "5%", "5", None, "%", ""),
            ("quantity", "50 万至 100 万元", "500000", "1000000", "元", "超过"),
            ("quantity", "2%", "2", None, "%", ""),
            ("quantity", "100 万元", "1000000", None, "元", "超过"),
            ("quantity", "1%", "1", None, "%", ""),
        ],
    ),
    (
        "1000 元（含）以下由部门负责人审批；1000 至 10000元（含）以下的由部门负责人及分管院领导审批，"
        "超过 10000元的由学院院长审批。",
        [
            ("quantity", "1000 元", "1000", None, "元", "含|以下"),
            ("quantity", "1000 至 10000元", "1000", "10000", "元", "含|以下"),
            ("quantity", "10000元", "10000", None, "元", "超过"),
        ],
    ),
    (
        "第三十三条  财务报销、借款时间为每周星期一、二、\n"
        "四、五全天，报销业务截止下午 4：00，特殊业务除外。",
        [
            ("article", "第三十三条", "33", None, "条", ""),
            ("item", "四、", "4", None, "", ""),
            ("date", "4：00", "400", None, "", ""),
        ],
    ),
    (
        "第三十四条  每月第一个工作日和最后一个工作日为月末结账时间，"
        "季度初所在月第 1-3 个工作日为上季度结账时间，年末结账时间根据当年财政要求另行安排。",
        [
            ("article", "第三十四条", "34", None, "条", ""),
            ("ordinal", "第一个工作日", "1", None, "工作日", ""),
            ("quantity", "1-3 个工作日", "1", "3", "工作日", ""),
        ],
    ),
    (
        "其中，项目组成员劳务费不得高于潍坊市科技从业人员平均工资水平，且不得超过 1 万元/人月；"
        "项目负责人不得超过项目劳务费支出总额的 50%；",
        [
            ("quantity", "1 万元/人月", "10000", None, "元/人·月", "不超过"),
            ("quantity", "50%", "50", None, "%", ""),
        ],
    ),
    (
        "第十四条 预算内经费支出，大额资金报销实行“三重一大”报批制度。",
        [("article", "第十四条", "14", None, "条", "")],
    ),
    (
        "第十六条 年度剩余资金可结转下一年度继续使用。",
        [("article", "第十六条", "16", None, "条", "")],
    ),
    (
        "原则上每个部门年度内只批准一次。",
        [("quantity", "一次", "1", None, "次", "")],
    ),
    (
        "外地带实训老师每天出差补助按 80 元/天计发，包含交通、通讯、伙食等费用。",
        [("quantity", "80 元/天", "80", None, "元/天", "")],
    ),
    (
        "第二十三条  因公出差人员需填报《山东科技职业学院因公出差审批单》，"
        "部门党政正职及以上人员出差，由院长签批；其他人员出差预算金额达 1000 元以下的由协管或分管院长签批，"
        "1000 元以上（含 1000 元）由院长签批。",
        [
            ("article", "第二十三条", "23", None, "条", ""),
            ("quantity", "1000 元", "1000", None, "元", "以下"),
            ("quantity", "1000 元", "1000", None, "元", "以上|含"),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), CORPUS_SENTENCES)
def test_real_corpus_sentences(text: str, expected: list[Row]) -> None:
    assert _rows(text) == expected


_PDF_SPACE = re.compile(r"(?<=[0-9%])[ \t]+(?=[\u4e00-\u9fff])|(?<=[\u4e00-\u9fff])[ \t]+(?=[0-9])")


@pytest.mark.parametrize(("text", "expected"), CORPUS_SENTENCES)
def test_pdf_spaces_do_not_change_values(text: str, expected: list[Row]) -> None:
    """The same sentences with the PDF spaces removed (as the normaliser does) read the same."""
    squeezed = _PDF_SPACE.sub("", text)
    assert [(r[0], r[2], r[3], r[4], r[5]) for r in _rows(squeezed)] == [
        (e[0], e[2], e[3], e[4], e[5]) for e in expected
    ]


# --- beyond the brief: notation seen in rule texts and tables ---------------------------------------------
EXTRA = [
    ("差旅费标准见附件1。", [("ordinal", "1", "1", None, "", "")]),
    ("按第1、2、3条执行。", [("article", "第1、2、3条", "1", None, "条", "")]),
    ("第一、二条另行规定。", [("article", "第一、二条", "1", None, "条", "")]),
    (
        "第七条、第十七条至第十九条",
        [
            ("article", "第七条", "7", None, "条", ""),
            ("article", "第十七条", "17", None, "条", ""),
            ("article", "第十九条", "19", None, "条", ""),
        ],
    ),
    ("报销金额≤500元", [("quantity", "500元", "500", None, "元", "不超过")]),
    ("报销金额≥1000元", [("quantity", "1000元", "1000", None, "元", "不低于")]),
    ("参会人数＜50人", [("quantity", "50人", "50", None, "人", "低于")]),
    ("人均100元", [("quantity", "100元", "100", None, "元/人", "")]),
    ("稿酬80-300元/千字", [("quantity", "80-300元/千字", "80", "300", "元/千字", "")]),
    ("租金30元/平方米", [("quantity", "30元/平方米", "30", None, "元/平方米", "")]),
    ("下午4点前提交", [("date", "4点", "400", None, "", "")]),
    ("于3月底前完成", [("date", "3月", "3", None, "", "")]),
    ("总额的1/3", [("quantity", "1/3", "0.3333", None, "", "")]),
    ("2/3以上", [("quantity", "2/3", "0.6667", None, "", "以上")]),
    ("代码007", [("other", "007", "7", None, "", "")]),
    ("¥1,200.00", [("quantity", "¥1,200.00", "1200", None, "元", "")]),
    ("￥300", [("quantity", "￥300", "300", None, "元", "")]),
    ("见www.x.edu.cn/2022/c123a4567/page.htm", []),
    ("不超过3天（含3天）", [("quantity", "3天", "3", None, "天", "不超过|含")]),
    ("10%-20%", [("quantity", "10%-20%", "10", "20", "%", "")]),
    ("10-20%", [("quantity", "10-20%", "10", "20", "%", "")]),
    ("二十至五十万元", [("quantity", "二十至五十万元", "200000", "500000", "元", "")]),
    (
        "1万元以上5万元以下",
        [
            ("quantity", "1万元", "10000", None, "元", "以上"),
            ("quantity", "5万元", "50000", None, "元", "以下"),
        ],
    ),
    ("1.1 总则", [("item", "1.1", "1.1", None, "", "")]),
]


@pytest.mark.parametrize(("text", "expected"), EXTRA)
def test_extra_notation(text: str, expected: list[Row]) -> None:
    assert _rows(text) == expected


# --- parse_numeral, canonical, values_match --------------------------------------------------------------
@pytest.mark.parametrize(
    ("s", "value"),
    [
        ("1,200", "1200"),
        ("１２００", "1200"),
        ("8.8", "8.8"),
        ("0.5", "0.5"),
        ("10,000.00", "10000"),
        ("一千二百", "1200"),
        ("两万", "20000"),
        ("八十", "80"),
        ("十五", "15"),
        ("三分之一", "0.3333"),
        ("三分之二", "0.6667"),
        ("百分之十", "10"),
        ("百分之二十", "20"),
        ("五点五", "5.5"),
        ("零", "0"),
        ("5万", "50000"),
        ("1.5亿", "150000000"),
        ("20%", "20"),
        (" 42 ", "42"),
    ],
)
def test_parse_numeral(s: str, value: str) -> None:
    got = parse_numeral(s)
    assert got is not None
    assert canonical(got) == value


@pytest.mark.parametrize("s", ["1 200", "", "abc", "元", "万", "1,2000", "1.2.3", "十二三", "第一", "1000元"])
def test_parse_numeral_rejects(s: str) -> None:
    assert parse_numeral(s) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1200"), "1200"),
        (Decimal("1.2E+3"), "1200"),
        (Decimal("0.50"), "0.5"),
        (Decimal("10000.00"), "10000"),
        (Decimal("0.3333"), "0.3333"),
        (Decimal("0"), "0"),
        (Decimal("-0.0"), "0"),
        (Decimal("1E-7"), "0.0000001"),
        (Decimal("150000000"), "150000000"),
    ],
)
def test_canonical(value: Decimal, text: str) -> None:
    assert canonical(value) == text


def test_value_str_is_canonical() -> None:
    m = _one_rule("金额10,000.00元")
    assert m.value_str() == "10000" == canonical(m.value)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (Decimal("1200"), Decimal("1200.00"), True),
        (Decimal("1.2E+3"), Decimal("1200"), True),
        (Decimal("0.3333"), Decimal(1) / Decimal(3), True),
        (Decimal("0.6667"), Decimal(2) / Decimal(3), True),
        (Decimal("0.3333"), Decimal("0.3334"), False),
        (Decimal("0.33"), Decimal(1) / Decimal(3), False),
        (Decimal("1000"), Decimal("10000"), False),
        (Decimal("NaN"), Decimal("NaN"), False),
    ],
)
def test_values_match(a: Decimal, b: Decimal, same: bool) -> None:
    assert values_match(a, b) is same
    assert values_match(b, a) is same


# --- properties ------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=99_999_999))
def test_chinese_numeral_amounts_parse_back(n: int) -> None:
    written = cn2an.an2cn(n)
    for text in (written + "元", f"报销{written}元。"):
        m = _one_rule(text)
        assert m.value == n
        assert m.unit == "元"
        assert m.raw == written + "元"
    assert parse_numeral(written) == n


_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@settings(max_examples=300, deadline=None)
@given(
    st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
    st.sampled_from(["plain", "thousands", "fullwidth", "fullwidth_thousands", "integer"]),
)
def test_arabic_formats_parse_back(value: Decimal, style: str) -> None:
    if style == "integer":
        value = value.to_integral_value()
    written = format(value, ",f" if "thousands" in style else "f")
    if "fullwidth" in style:
        written = written.translate(_FULL_WIDTH)
    assert parse_numeral(written) == value
    m = _one_rule(f"金额{written}元以上")
    assert m.value == value
    assert (m.unit, m.qualifier, m.raw) == ("元", "以上", written + "元")


_ALPHABET = (
    "0123456789０１２３４５６７８９一二两三四五六七八九十百千万亿零〇点"
    "。，、；：元万亿%％（）()〔〕[]【】-～~—第条章节款项号年月日天人次个折每以上下内含不超过至到分之"
    ".．,/／· \n的费用金额标准报销差旅会议"
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=80))
def test_find_numbers_never_raises_and_spans_are_sound(text: str) -> None:
    mentions = find_numbers(text)
    previous_end = 0
    for m in mentions:
        assert m.raw == text[m.start : m.end]
        assert m.raw
        assert m.start >= previous_end  # sorted, non-overlapping
        previous_end = m.end
        assert m.kind in KINDS
        assert m.value.is_finite()
        assert canonical(m.value) == m.value_str()
        if m.kind != "quantity":
            assert m.qualifier == ""
    assert rule_numbers(text) == [m for m in mentions if m.is_rule]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_find_numbers_on_any_unicode(text: str) -> None:
    for m in find_numbers(text):
        assert m.raw == text[m.start : m.end]


def test_one_megabyte_in_one_pass() -> None:
    """A large text parses like its parts (speed is measured in bench/ingest.py, not asserted)."""
    sentences = "".join(text for text, _ in CORPUS_SENTENCES)
    paragraph = sentences + "".join(t for t, *_ in ARABIC + CHINESE) + "\n"
    repeats = 1_000_000 // len(paragraph.encode()) + 1
    single = [(m.value, m.unit, m.kind) for m in find_numbers(paragraph)]
    mentions = find_numbers(paragraph * repeats)
    assert len(mentions) == len(single) * repeats
    assert [(m.value, m.unit, m.kind) for m in mentions[: len(single)]] == single
