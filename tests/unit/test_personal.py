from datetime import date

import pytest

from grassroots.kernel.crypto import KeyRing, SoftwareProvider
from grassroots.kernel.errors import ValidationFailed
from grassroots.kernel.i18n import translate
from grassroots.kernel.personal import (
    ADDRESS,
    ID_MASK_REGION,
    ID_NUMBER,
    PHONE,
    Phone,
    PhoneKind,
    id_check_char,
    mask_address,
    mask_id_number,
    mask_name,
    mask_phone,
    validate_id_number,
    validate_mobile,
    validate_phone,
)

TODAY = date(2026, 3, 10)


def _id(first17: str) -> str:
    return first17 + id_check_char(first17)


def _failure(value: str, **kwargs: date) -> str:
    with pytest.raises(ValidationFailed) as caught:
        validate_id_number(value, **kwargs)
    return caught.value.message_id


# --- ID numbers ----------------------------------------------------------------------------------


def test_the_check_character_follows_iso_7064_mod_11_2() -> None:
    # The worked example printed in GB 11643-1999 itself.
    assert id_check_char("11010519491231002") == "X"
    # Weights × digits of 44030419900101001 sum to 176; 176 mod 11 = 0 → "1".
    assert id_check_char("44030419900101001") == "1"


def test_a_valid_number_is_accepted_and_returned_unchanged() -> None:
    number = _id("44030419900101001")
    assert validate_id_number(number, today=TODAY) == number


def test_a_lowercase_x_is_normalised_to_upper_case() -> None:
    assert validate_id_number(" 11010519491231002x ", today=TODAY) == "11010519491231002X"


def test_a_wrong_check_character_is_refused() -> None:
    number = _id("44030419900101001")
    wrong = number[:17] + ("4" if number[17] != "4" else "5")
    assert _failure(wrong, today=TODAY) == "personal.id.checksum"


def test_a_swapped_pair_of_digits_is_caught_by_the_checksum() -> None:
    number = _id("44030419900101001")
    swapped = number[:15] + number[16] + number[15] + number[17:]
    assert swapped != number
    assert _failure(swapped, today=TODAY) == "personal.id.checksum"


@pytest.mark.parametrize("value", ["", "4403041990010100", "4403041990010100123"])
def test_a_number_of_the_wrong_length_is_refused(value: str) -> None:
    assert _failure(value, today=TODAY) == "personal.id.length"


def test_letters_in_the_body_are_refused() -> None:
    assert _failure("44030419900101A013", today=TODAY) == "personal.id.format"


def test_an_unknown_province_code_is_refused() -> None:
    assert _failure(_id("99030419900101001"), today=TODAY) == "personal.id.region"


@pytest.mark.parametrize("body", [
    "44030419900230001",  # 30 February
    "44030419901301001",  # month 13
    "44030418991231001",  # before 1900
    "44030420260311001",  # tomorrow
])
def test_an_impossible_birth_date_is_refused(body: str) -> None:
    assert _failure(_id(body), today=TODAY) == "personal.id.birthdate"


def test_a_person_born_today_is_accepted() -> None:
    number = _id("44030420260310001")
    assert validate_id_number(number, today=TODAY) == number


def test_every_id_message_has_both_languages() -> None:
    for key in ("length", "format", "region", "birthdate", "checksum"):
        message_id = f"personal.id.{key}"
        for language in ("zh_CN", "en"):
            assert translate(message_id, language, length=1, code="x", birthdate="x") != message_id


def test_id_masks_show_one_and_two_by_default_or_six_and_four() -> None:
    number = "11010519491231002X"
    assert mask_id_number(number) == "1***************2X"
    assert mask_id_number(number, keep=ID_MASK_REGION) == "110105********002X"
    assert len(mask_id_number(number)) == 18


# --- Phones --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "13812341234", "138 1234 1234", "138-1234-1234", "+86 138 1234 1234", "+8613812341234",
    "008613812341234", "8613812341234",
])
def test_mobile_numbers_are_normalised_to_eleven_digits(value: str) -> None:
    assert validate_phone(value) == Phone(PhoneKind.MOBILE, "13812341234")


@pytest.mark.parametrize(("value", "number"), [
    ("010-12345678", "010-12345678"),
    ("(0755) 8765 4321", "0755-87654321"),
    ("0571-8765432", "0571-8765432"),
    ("+86 10 1234 5678", "010-12345678"),
    ("010-12345678-801", "010-12345678-801"),
    ("0755-87654321转123", "0755-87654321-123"),
])
def test_landlines_with_area_codes_are_a_separate_kind(value: str, number: str) -> None:
    assert validate_phone(value) == Phone(PhoneKind.LANDLINE, number)


@pytest.mark.parametrize("value", [
    "12812341234",  # no mobile network starts with 12
    "1381234123",  # ten digits
    "138123412345",  # twelve
    "12345678",  # landline without area code
    "+1 415 555 0100",
    "138一二三四1234",
    "",
])
def test_other_numbers_are_refused(value: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_phone(value)
    assert caught.value.message_id == "personal.phone.invalid"


def test_validate_mobile_refuses_a_landline() -> None:
    assert validate_mobile("+86 138 1234 1234") == "13812341234"
    with pytest.raises(ValidationFailed) as caught:
        validate_mobile("010-12345678")
    assert caught.value.message_id == "personal.phone.not_mobile"


@pytest.mark.parametrize(("value", "masked"), [
    ("13812341234", "138****1234"),
    ("+86 138 1234 5678", "138****5678"),
    ("010-12345678", "010-****5678"),
    ("0571-8765432-801", "0571-***5432"),
])
def test_phone_masks(value: str, masked: str) -> None:
    assert mask_phone(value) == masked


def test_a_phone_that_is_not_valid_still_shows_no_more_than_four_digits() -> None:
    assert mask_phone("12812341234") == "*******1234"
    assert mask_phone("123") == "****"


# --- Names and addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "masked"), [
    ("张三", "张*"),
    ("张三丰", "张**"),
    ("欧阳娜娜", "欧阳**"),
    ("欧阳锋", "欧阳*"),
    ("司马", "司*"),  # two characters: never show more than one
    ("阿依古丽·买买提", "阿***·***"),
    ("张", "*"),
    ("", ""),
])
def test_name_masks(value: str, masked: str) -> None:
    assert mask_name(value) == masked


@pytest.mark.parametrize(("value", "masked"), [
    ("北京市朝阳区建国路88号院3号楼2单元501", "北京市朝阳区建国路****"),
    ("重庆市江津区双福街道双福大道18号", "重庆市江津区双福街道双福大道****"),
    ("广东省深圳市南山区粤海街道科技园路1号", "广东省深圳市南山区粤海街道科技园路****"),
    ("河北省保定市清苑区东闾乡东闾村3组12号", "河北省保定市清苑区东闾乡东闾村****"),
    ("北京市朝阳区建国路阳光花园5栋", "北京市朝阳区建国路****"),
    ("阿拉善盟阿拉善左旗巴彦浩特镇12号", "阿拉善盟阿拉善左旗巴彦浩特镇****"),
    ("重庆市江津区双福街道", "重庆市江津区双福街道"),
    ("幸福家园12栋", "****"),
    ("", ""),
])
def test_address_masks_keep_the_road_or_village_and_hide_the_house(value: str,
                                                                   masked: str) -> None:
    assert mask_address(value) == masked


# --- Sensitive fields ----------------------------------------------------------------------------


def test_a_sensitive_field_encrypts_indexes_and_masks_the_normalised_value() -> None:
    crypto = SoftwareProvider(KeyRing.generate())
    stored = PHONE.protect("+86 138 1234 5678", crypto=crypto)
    assert stored.masked == "138****5678"
    assert crypto.decrypt(stored.ciphertext, context="person.phone") == "13812345678"
    assert "13812345678" not in stored.ciphertext
    # A search typed in another format finds the same row.
    assert PHONE.blind_index("138-1234-5678", crypto=crypto) == stored.index


def test_the_id_number_field_refuses_an_invalid_number() -> None:
    crypto = SoftwareProvider(KeyRing.generate())
    with pytest.raises(ValidationFailed):
        ID_NUMBER.protect("110105194912310021", crypto=crypto)
    stored = ID_NUMBER.protect("11010519491231002x", crypto=crypto)
    assert stored.masked == "1***************2X"


def test_an_address_is_encrypted_and_masked_but_not_indexed() -> None:
    crypto = SoftwareProvider(KeyRing.generate())
    stored = ADDRESS.protect(" 北京市朝阳区建国路88号 ", crypto=crypto)
    assert stored.index is None
    assert stored.masked == "北京市朝阳区建国路****"
    assert crypto.decrypt(stored.ciphertext, context="person.address") == "北京市朝阳区建国路88号"
