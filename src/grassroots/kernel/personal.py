"""Personal data (PIPL Art. 28, 51): validate, encrypt at rest, mask by default, log every reveal.

Rules, in one place so pages, exports and the API all show the same thing:

- Resident ID numbers (GB 11643-1999): 6-digit division code, 8-digit birth date, 3-digit order
  number, ISO 7064 MOD 11-2 check character. Stored upper-case (``x`` becomes ``X``).
- Phones: mainland mobiles ``1[3-9]`` + 9 digits, with any ``+86``/``0086``/``86`` prefix removed;
  landlines ``0AA-NNNNNNNN`` (``010`` and ``02x`` have 3-digit area codes and 8-digit numbers,
  every other area code has 4 digits and a 7- or 8-digit number), optional ``-ext``.
- Masks (DOMAIN.md §6): phone ``138****1234`` / ``010-****5678``; name ``张*``, ``张**``,
  ``欧阳**``; ID number first 1 + last 2 shown by default, or first 6 + last 4; address: see
  `mask_address`.

Revealing a full value is `reveal`: the caller has already checked
`Permission.PERSONAL_DATA_UNMASK` (and the data scope); `reveal` insists on a stated reason and
writes the audit row in the caller's transaction, so a reveal that is not committed is not logged
and must not be shown either.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from grassroots.kernel.audit import record
from grassroots.kernel.clock import to_display, utcnow
from grassroots.kernel.errors import ValidationFailed

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from grassroots.kernel.crypto import CryptoProvider
    from grassroots.runtime import Runtime

# --- Resident ID numbers (GB 11643-1999) -------------------------------------------------------

ID_LENGTH = 18
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARS = "10X98765432"
ID_EARLIEST_BIRTH = date(1900, 1, 1)
# Province-level codes of GB/T 2260, plus 71 Taiwan, 81 Hong Kong, 82 Macao; 83 is the prefix of
# the residence-permit numbers issued to Taiwan residents living on the mainland (2018 rules).
PROVINCE_CODES = frozenset({
    "11", "12", "13", "14", "15",
    "21", "22", "23",
    "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46",
    "50", "51", "52", "53", "54",
    "61", "62", "63", "64", "65",
    "71", "81", "82", "83",
})


def id_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits."""
    if len(first17) != ID_LENGTH - 1 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK_CHARS[total % 11]


def _today() -> date:
    # A birth date is a Beijing calendar date, so "today" is too.
    return to_display(utcnow()).date()


def validate_id_number(value: str, *, today: date | None = None) -> str:
    """The normalised 18-character ID number, or ValidationFailed naming what is wrong."""
    number = value.strip().upper()
    if len(number) != ID_LENGTH:
        raise ValidationFailed("personal.id.length", length=len(number))
    body, check = number[:17], number[17]
    if not (body.isascii() and body.isdigit() and (check.isdigit() or check == "X")):
        raise ValidationFailed("personal.id.format")
    if body[:2] not in PROVINCE_CODES:
        raise ValidationFailed("personal.id.region", code=body[:6])
    try:
        born = date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        raise ValidationFailed("personal.id.birthdate", birthdate=body[6:14]) from None
    if born < ID_EARLIEST_BIRTH or born > (today or _today()):
        raise ValidationFailed("personal.id.birthdate", birthdate=body[6:14])
    if id_check_char(body) != check:
        raise ValidationFailed("personal.id.checksum")
    return number


def id_birth_date(number: str) -> date:
    """The birth date inside an already validated ID number."""
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


# --- Phones -------------------------------------------------------------------------------------


class PhoneKind(enum.StrEnum):
    MOBILE = "mobile"
    LANDLINE = "landline"


@dataclass(frozen=True)
class Phone:
    kind: PhoneKind
    number: str  # "13812341234" or "010-12345678" / "0571-8765432-801"


_SEPARATORS = re.compile(r"[\s\-()（）.]")
_INTERNATIONAL = re.compile(r"^(?:\+86|0086|86(?=1[3-9]\d{9}$))")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_LANDLINE_3 = re.compile(r"^(010|02\d)(\d{8})$")
_LANDLINE_4 = re.compile(r"^(0[3-9]\d{2})(\d{7,8})$")
_EXTENSION = re.compile(r"^(.*\S)\s*(?:转|ext\.?|x|#|-)\s*(\d{1,6})$", re.IGNORECASE)


def validate_phone(value: str) -> Phone:
    """A mainland mobile or a landline with area code, normalised; else ValidationFailed."""
    text = value.strip()
    phone = _parse_phone(text)
    if phone is not None:
        return phone
    match = _EXTENSION.match(text)
    if match:
        head = _parse_phone(match.group(1))
        if head is not None and head.kind is PhoneKind.LANDLINE:
            return Phone(PhoneKind.LANDLINE, f"{head.number}-{match.group(2)}")
    raise ValidationFailed("personal.phone.invalid")


def validate_mobile(value: str) -> str:
    """A mainland mobile number as 11 digits; a landline is refused."""
    phone = validate_phone(value)
    if phone.kind is not PhoneKind.MOBILE:
        raise ValidationFailed("personal.phone.not_mobile")
    return phone.number


def _parse_phone(text: str) -> Phone | None:
    cleaned = _SEPARATORS.sub("", text)
    digits = _INTERNATIONAL.sub("", cleaned)
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    if _MOBILE.match(digits):
        return Phone(PhoneKind.MOBILE, digits)
    if digits != cleaned and not digits.startswith("0"):
        digits = "0" + digits  # "+86 10 …" leaves out the trunk prefix a domestic call dials
    match = _LANDLINE_3.match(digits) or _LANDLINE_4.match(digits)
    if match is None:
        return None
    return Phone(PhoneKind.LANDLINE, f"{match.group(1)}-{match.group(2)}")


# --- Masks --------------------------------------------------------------------------------------

MASK = "*"
ID_MASK_DEFAULT = (1, 2)  # "1***************2X"
ID_MASK_REGION = (6, 4)  # "110105********123X": keeps the division code for local checks


def mask_phone(value: str) -> str:
    """138****1234 for a mobile, 010-****5678 for a landline; other text keeps only its last 4."""
    try:
        phone = validate_phone(value)
    except ValidationFailed:
        text = _SEPARATORS.sub("", value.strip())
        return MASK * max(len(text) - 4, 4) + text[-4:] if len(text) > 6 else MASK * 4
    if phone.kind is PhoneKind.MOBILE:
        return phone.number[:3] + MASK * 4 + phone.number[-4:]
    area, number = phone.number.split("-")[:2]  # an extension is dropped from the display
    return f"{area}-{MASK * (len(number) - 4)}{number[-4:]}"


# Compound surnames (复姓) stay whole: "欧阳**", not "欧***". Names of two characters keep one.
COMPOUND_SURNAMES = frozenset({
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "长孙", "慕容", "司徒",
    "司空", "夏侯", "令狐", "宇文", "轩辕", "端木", "独孤", "南宫", "西门", "澹台", "万俟",
    "呼延", "申屠", "闻人", "赫连", "鲜于", "百里", "东郭", "太史", "公冶", "濮阳", "淳于",
    "单于", "钟离", "宗政", "拓跋", "仲孙", "叔孙", "乐正", "漆雕", "壤驷", "公良", "谷梁",
    "段干", "左丘", "东门", "梁丘", "第五", "亓官", "巫马", "子车", "颛孙", "羊舌", "微生",
})
_NAME_SEPARATORS = frozenset("·• ")


def mask_name(value: str) -> str:
    """张三 → 张*, 张三丰 → 张**, 欧阳娜娜 → 欧阳**; separators in 阿依·古丽 style names stay."""
    name = value.strip()
    if not name:
        return ""
    keep = 2 if len(name) > 2 and name[:2] in COMPOUND_SURNAMES else 1
    if len(name) == 1:
        return MASK
    return name[:keep] + "".join(c if c in _NAME_SEPARATORS else MASK for c in name[keep:])


def mask_id_number(value: str, *, keep: tuple[int, int] = ID_MASK_DEFAULT) -> str:
    """First and last characters shown, the rest starred; length kept so it still reads as an ID."""
    number = value.strip().upper()
    head, tail = keep
    if len(number) <= head + tail:
        return MASK * len(number)
    return number[:head] + MASK * (len(number) - head - tail) + number[len(number) - tail:]


# Address rule: show the address up to and including the last road/street/village word that comes
# before the first Arabic digit, and replace the rest with "****"; without such a word, up to the
# last administrative-level word (省 市 区 县 镇 乡 ...). Road and village names are shared by many
# households; house, building, unit and room numbers point at one. A fixed "****" hides how long
# the hidden part was. The rule cannot see a house named only in words ("张家大院"), which is
# masked only when it follows a road or village word.
_STREET_LEVEL = re.compile(r"(街道|大道|大街|胡同|社区|路|街|巷|弄|里|村|屯|嘎查|组)")
_ADMIN_LEVEL = re.compile(r"(自治区|自治州|特别行政区|省|市|区|县|旗|盟|州|镇|乡|苏木)")
_FIRST_DIGIT = re.compile(r"[0-9０-９]")
ADDRESS_MASK = MASK * 4


def mask_address(value: str) -> str:
    """北京市朝阳区建国路88号院3号楼501 → 北京市朝阳区建国路****."""
    address = value.strip()
    digit = _FIRST_DIGIT.search(address)
    prefix = address[: digit.start()] if digit else address
    end = _last_end(_STREET_LEVEL, prefix) or _last_end(_ADMIN_LEVEL, prefix)
    if end is None:
        return ADDRESS_MASK if address else ""
    if end == len(address):
        return address
    return address[:end] + ADDRESS_MASK


def _last_end(pattern: re.Pattern[str], text: str) -> int | None:
    ends = [m.end() for m in pattern.finditer(text)]
    return ends[-1] if ends else None


# --- Storing and revealing -----------------------------------------------------------------------

REVEAL_ACTION = "personal_data:unmask"
REASON_MIN_CHARS = 4
REASON_MAX_CHARS = 500


@dataclass(frozen=True)
class Protected:
    """What a table stores for one sensitive value: ciphertext, blind index, masked display form."""

    ciphertext: str
    index: str | None
    masked: str


@dataclass(frozen=True)
class SensitiveField:
    """One kind of personal value: how to normalise, encrypt, index and mask it.

    `context` is bound into the ciphertext (a value copied into another column fails to decrypt)
    and into the blind index; use the "<table>.<column>" style and never change it once stored.
    Register the ciphertext column with `grassroots.kernel.keys.register_encrypted_column` so key
    rotation re-encrypts it.
    """

    context: str
    mask: Callable[[str], str]
    normalise: Callable[[str], str] = str.strip
    indexed: bool = True

    def protect(self, value: str, *, crypto: CryptoProvider) -> Protected:
        clean = self.normalise(value)
        return Protected(
            ciphertext=crypto.encrypt(clean, context=self.context),
            index=crypto.blind_index(clean, context=self.context) if self.indexed else None,
            masked=self.mask(clean),
        )

    def encrypt(self, value: str, *, crypto: CryptoProvider) -> str:
        return crypto.encrypt(self.normalise(value), context=self.context)

    def blind_index(self, value: str, *, crypto: CryptoProvider) -> str:
        """The look-up key for an exact-match search; the input is normalised like stored values."""
        return crypto.blind_index(self.normalise(value), context=self.context)

    def masked(self, value: str) -> str:
        return self.mask(self.normalise(value))

    def reveal(self, session: Session, *, runtime: Runtime, actor: str, object_type: str,
               object_id: str | int, ciphertext: str, reason: str,
               source_ip: str | None = None) -> str:
        return reveal(session, runtime=runtime, actor=actor, field_context=self.context,
                      object_type=object_type, object_id=object_id, ciphertext=ciphertext,
                      reason=reason, source_ip=source_ip)


def _phone_number(value: str) -> str:
    return validate_phone(value).number


ID_NUMBER = SensitiveField("person.id_number", mask=mask_id_number, normalise=validate_id_number)
PHONE = SensitiveField("person.phone", mask=mask_phone, normalise=_phone_number)
ADDRESS = SensitiveField("person.address", mask=mask_address, indexed=False)


def reveal(
    session: Session,
    *,
    runtime: Runtime,
    actor: str,
    field_context: str,
    object_type: str,
    object_id: str | int,
    ciphertext: str,
    reason: str,
    source_ip: str | None = None,
) -> str:
    """Decrypt one value for one person with a stated reason, logging it in the same transaction.

    The caller checks `Permission.PERSONAL_DATA_UNMASK` and the data scope before calling, and
    commits; the audit row is flushed here so a failure to log stops the reveal.
    """
    stated = " ".join(reason.split())
    if len(stated) < REASON_MIN_CHARS:
        raise ValidationFailed("personal.reveal.reason_required", minimum=REASON_MIN_CHARS)
    if len(stated) > REASON_MAX_CHARS:
        raise ValidationFailed("personal.reveal.reason_too_long", maximum=REASON_MAX_CHARS)
    plaintext = runtime.crypto.decrypt(ciphertext, context=field_context)
    record(session, runtime=runtime, actor=actor, action=REVEAL_ACTION, object_type=object_type,
           object_id=object_id, source_ip=source_ip,
           detail={"field": field_context, "reason": stated})
    session.flush()
    return plaintext
