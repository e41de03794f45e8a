from collections.abc import Iterator

import pytest

from grassroots.kernel.auth import hashers
from grassroots.kernel.auth.hashers import (
    Pbkdf2Sm3Hasher,
    check_password_rules,
    hash_password,
    identify,
    needs_rehash,
    set_default_algorithm,
    verify_password,
)
from grassroots.kernel.errors import ValidationFailed

GOOD = "Correct-Horse-9"


@pytest.fixture
def sm3_default() -> Iterator[None]:
    previous = set_default_algorithm("pbkdf2_sm3")
    yield
    set_default_algorithm(previous)


def test_the_default_hasher_is_argon2id() -> None:
    encoded = hash_password(GOOD)
    assert encoded.startswith("$argon2id$")
    assert verify_password(encoded, GOOD)
    assert not verify_password(encoded, GOOD + "x")


def test_pbkdf2_sm3_hashes_are_encoded_with_iterations_salt_and_hash() -> None:
    encoded = hash_password(GOOD, algorithm="pbkdf2_sm3")
    name, iterations, salt, digest = encoded.split("$")
    assert name == "pbkdf2_sm3"
    assert int(iterations) >= 100_000
    assert salt and digest
    assert verify_password(encoded, GOOD)
    assert not verify_password(encoded, "Wrong-Horse-9")


def test_two_hashes_of_one_password_differ_by_their_salt() -> None:
    assert hash_password(GOOD, algorithm="pbkdf2_sm3") != hash_password(
        GOOD, algorithm="pbkdf2_sm3")


def test_the_registry_picks_the_hasher_by_prefix() -> None:
    assert identify(hash_password(GOOD)) is hashers.HASHERS["argon2id"]
    assert identify(hash_password(GOOD, algorithm="pbkdf2_sm3")) is hashers.HASHERS["pbkdf2_sm3"]
    assert identify("md5$abc") is None


def test_an_unknown_or_corrupt_hash_never_verifies() -> None:
    assert not verify_password("md5$whatever", GOOD)
    assert not verify_password("pbkdf2_sm3$x$y$z", GOOD)
    assert not verify_password("$argon2id$garbage", GOOD)


def test_an_unknown_algorithm_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown password hasher"):
        hash_password(GOOD, algorithm="rot13")


def test_fewer_than_100k_pbkdf2_iterations_are_refused() -> None:
    with pytest.raises(ValueError):
        Pbkdf2Sm3Hasher(iterations=50_000)


def test_a_hash_from_the_non_default_algorithm_needs_rehash() -> None:
    assert needs_rehash(hash_password(GOOD, algorithm="pbkdf2_sm3"))
    assert not needs_rehash(hash_password(GOOD))


def test_a_pbkdf2_hash_with_fewer_iterations_than_today_needs_rehash(sm3_default: None) -> None:
    weak = Pbkdf2Sm3Hasher(iterations=100_000).hash(GOOD)
    assert verify_password(weak, GOOD)
    assert needs_rehash(weak)
    assert not needs_rehash(hash_password(GOOD))


def test_the_default_can_be_switched_to_sm3_in_code(sm3_default: None) -> None:
    assert hash_password(GOOD).startswith("pbkdf2_sm3$")
    assert needs_rehash(hash_password(GOOD, algorithm="argon2id"))


@pytest.mark.parametrize(
    ("password", "message_id"),
    [
        ("Short-1", "auth.password.too_short"),
        ("alllowercaseletters", "auth.password.too_simple"),
        ("lowercase123456", "auth.password.too_simple"),
        ("Zhangsan-2024", "auth.password.same_as_username"),
        ("x" * 300 + "A1-", "auth.password.too_long"),
    ],
)
def test_weak_passwords_are_refused_with_a_message_id(password: str, message_id: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_password_rules(password, username="zhangsan-2024")
    assert caught.value.message_id == message_id


@pytest.mark.parametrize(
    "password", ["Correct-Horse-9", "lower-case-99", "UPPERlower123", "密码Abc12345"])
def test_three_of_four_classes_and_ten_characters_pass(password: str) -> None:
    check_password_rules(password, username="zhangsan")


def test_password_rule_messages_exist_in_both_languages() -> None:
    from grassroots.kernel.i18n import translate

    for message_id in ("auth.password.too_short", "auth.password.too_simple",
                       "auth.password.same_as_username", "auth.password.too_long"):
        for language in ("zh_CN", "en"):
            assert translate(message_id, language, min=10, max=256, classes=3) != message_id
