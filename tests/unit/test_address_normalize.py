"""Normalising typed addresses and the lookup keys a stored standard address may equal."""

from __future__ import annotations

from grassroots.kernel.addresses.normalize import (
    MAX_PREFIX_CHARS,
    MAX_STARTS,
    MIN_KEY_CHARS,
    lookup_keys,
    normalize,
    stored_key,
)

TYPED = "重庆市江津区双福街道X路1号2单元301室"


def test_normalize_drops_spaces_and_punctuation_of_both_scripts() -> None:
    typed = " 重庆市·江津区、双福街道，福城路-1号（A栋）。 \t\n"
    assert normalize(typed) == "重庆市江津区双福街道福城路1号A栋"


def test_normalize_folds_full_width_forms_and_upper_cases_ascii_letters() -> None:
    assert normalize("Ｘ路１号ｂ座") == "X路1号B座"
    assert normalize("x路1号b座") == normalize("X路1号B座")


def test_normalize_drops_zero_width_characters_pasted_from_chat() -> None:
    assert normalize("双福\u200b街道\u00a0X路") == "双福街道X路"


def test_normalize_of_nothing_but_punctuation_is_empty() -> None:
    assert normalize(" ·、，-— ") == ""


def test_a_longer_typed_address_yields_the_stored_forms_without_its_tail() -> None:
    keys = lookup_keys(TYPED)
    assert "双福街道X路1号" in keys
    assert "江津区双福街道X路1号" in keys
    assert "重庆市江津区双福街道X路1号" in keys
    assert normalize(TYPED) in keys


def test_keys_start_only_at_the_beginning_or_after_a_division_marker() -> None:
    keys = lookup_keys(TYPED)
    assert "福街道X路1号" not in keys  # starts inside a name
    assert "津区双福街道X路1号" not in keys
    assert "X路1号" in keys  # right after "街道", and four characters long
    assert "X路1" not in keys  # too short


def test_keys_are_longest_first_and_at_least_the_minimum_length() -> None:
    keys = lookup_keys(TYPED)
    assert keys == sorted(keys, key=lambda k: (-len(k), k))
    assert min(len(k) for k in keys) >= MIN_KEY_CHARS
    assert len(keys) == len(set(keys))


def test_spelling_differences_give_the_same_keys() -> None:
    typed = "重庆市 江津区·双福街道 Ｘ路1号"
    assert lookup_keys(typed) == lookup_keys("重庆市江津区双福街道x路1号")


def test_empty_or_short_input_has_no_keys() -> None:
    assert lookup_keys("") == []
    assert lookup_keys("、、") == []
    assert lookup_keys("双福") == []


def test_the_number_of_keys_stays_bounded_for_the_longest_input() -> None:
    worst = "市区县镇乡" * 60  # 300 characters, a marker at every position
    keys = lookup_keys(worst)
    assert len(keys) <= MAX_STARTS * (MAX_PREFIX_CHARS + 1)
    long_text = "重庆市江津区双福街道" + "福" * 400
    keys = lookup_keys(long_text)
    assert len(keys) <= MAX_STARTS * (MAX_PREFIX_CHARS + 1)
    assert max(len(k) for k in keys) <= 300


def test_an_address_is_stored_from_its_street_on() -> None:
    assert stored_key("重庆市江津区双福街道福城路1号") == "双福街道福城路1号"
    assert stored_key("江津区·双福街道 双福新区片区1栋") == "双福街道双福新区片区1栋"
    assert stored_key("福城路1号") == "福城路1号"  # no street named: kept whole
