"""Password hashers chosen by the prefix of the stored hash, and the MLPS level-3 password rules.

Two hashers are registered:

- ``argon2id`` (argon2-cffi), the default: memory-hard, the general best practice.
- ``pbkdf2_sm3``: PBKDF2-HMAC-SM3, for deployments whose commercial-cryptography assessment
  (GB/T 39786) asks for SM algorithms; stored as ``pbkdf2_sm3$iterations$salt_b64$hash_b64``.

Which hasher new hashes use is a process-wide choice made in code, not a setting: pass
``algorithm="pbkdf2_sm3"`` to :func:`hash_password`, or call :func:`set_default_algorithm` once at
start-up. Existing hashes of either kind keep verifying; :func:`needs_rehash` says when a hash
should be replaced (other algorithm, or weaker parameters) so the next login upgrades it.
"""

from __future__ import annotations

import base64
import os
import secrets
from typing import Protocol

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from grassroots.kernel.errors import ValidationFailed

PASSWORD_MIN_LENGTH = 10
# A ceiling keeps a megabyte "password" from becoming a denial of service.
PASSWORD_MAX_LENGTH = 256
PASSWORD_MIN_CLASSES = 3

PBKDF2_SM3_ITERATIONS = 300_000
PBKDF2_SM3_MIN_ITERATIONS = 100_000
PBKDF2_SALT_BYTES = 16
PBKDF2_HASH_BYTES = 32


class PasswordHasher(Protocol):
    algorithm: str

    def hash(self, password: str) -> str: ...

    def verify(self, encoded: str, password: str) -> bool: ...

    def needs_rehash(self, encoded: str) -> bool: ...

    def identifies(self, encoded: str) -> bool: ...


class Argon2idHasher:
    """argon2-cffi's PasswordHasher with its RFC 9106 low-memory defaults."""

    algorithm = "argon2id"

    def __init__(self) -> None:
        self._hasher = _Argon2()

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True

    def identifies(self, encoded: str) -> bool:
        return encoded.startswith("$argon2id$")


class Pbkdf2Sm3Hasher:
    """PBKDF2 with HMAC-SM3 (GB/T 32905) through OpenSSL."""

    algorithm = "pbkdf2_sm3"

    def __init__(self, iterations: int = PBKDF2_SM3_ITERATIONS) -> None:
        if iterations < PBKDF2_SM3_MIN_ITERATIONS:
            raise ValueError(f"PBKDF2-SM3 needs at least {PBKDF2_SM3_MIN_ITERATIONS} iterations")
        self.iterations = iterations

    @staticmethod
    def _derive(password: str, salt: bytes, iterations: int) -> bytes:
        kdf = PBKDF2HMAC(algorithm=hashes.SM3(), length=PBKDF2_HASH_BYTES, salt=salt,
                         iterations=iterations)
        return kdf.derive(password.encode("utf-8"))

    def hash(self, password: str) -> str:
        salt = os.urandom(PBKDF2_SALT_BYTES)
        digest = self._derive(password, salt, self.iterations)
        return "$".join([self.algorithm, str(self.iterations), _b64(salt), _b64(digest)])

    def _parse(self, encoded: str) -> tuple[int, bytes, bytes] | None:
        parts = encoded.split("$")
        if len(parts) != 4 or parts[0] != self.algorithm:
            return None
        try:
            iterations = int(parts[1])
            salt = base64.b64decode(parts[2], validate=True)
            digest = base64.b64decode(parts[3], validate=True)
        except ValueError:
            return None
        if iterations < 1 or not salt or not digest:
            return None
        return iterations, salt, digest

    def verify(self, encoded: str, password: str) -> bool:
        parsed = self._parse(encoded)
        if parsed is None:
            return False
        iterations, salt, digest = parsed
        return secrets.compare_digest(self._derive(password, salt, iterations), digest)

    def needs_rehash(self, encoded: str) -> bool:
        parsed = self._parse(encoded)
        return parsed is None or parsed[0] < self.iterations

    def identifies(self, encoded: str) -> bool:
        return encoded.startswith(self.algorithm + "$")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


HASHERS: dict[str, PasswordHasher] = {
    Argon2idHasher.algorithm: Argon2idHasher(),
    Pbkdf2Sm3Hasher.algorithm: Pbkdf2Sm3Hasher(),
}
DEFAULT_ALGORITHM = Argon2idHasher.algorithm
_default_algorithm = DEFAULT_ALGORITHM


def get_hasher(algorithm: str | None = None) -> PasswordHasher:
    """The hasher registered under `algorithm`, or the current default."""
    name = algorithm or _default_algorithm
    try:
        return HASHERS[name]
    except KeyError:
        raise ValueError(f"unknown password hasher {name!r}; one of {sorted(HASHERS)}") from None


def set_default_algorithm(algorithm: str) -> str:
    """Make `algorithm` the hasher for new hashes; returns the previous name (to restore)."""
    global _default_algorithm
    get_hasher(algorithm)
    previous, _default_algorithm = _default_algorithm, algorithm
    return previous


def default_algorithm() -> str:
    return _default_algorithm


def identify(encoded: str) -> PasswordHasher | None:
    """The hasher that wrote `encoded`, found by its prefix; None for an unknown format."""
    for hasher in HASHERS.values():
        if hasher.identifies(encoded):
            return hasher
    return None


def hash_password(password: str, *, algorithm: str | None = None) -> str:
    return get_hasher(algorithm).hash(password)


def verify_password(encoded: str, password: str) -> bool:
    """True when `password` matches; an unknown or corrupt hash never matches."""
    hasher = identify(encoded)
    return hasher is not None and hasher.verify(encoded, password)


def needs_rehash(encoded: str, *, algorithm: str | None = None) -> bool:
    """True when the hash was made by another algorithm than the default, or weaker parameters."""
    target = get_hasher(algorithm)
    hasher = identify(encoded)
    return hasher is not target or target.needs_rehash(encoded)


def _character_classes(password: str) -> int:
    lower = any(c.islower() for c in password)
    upper = any(c.isupper() for c in password)
    digit = any(c.isdigit() for c in password)
    symbol = any(not c.isalnum() for c in password)
    return sum((lower, upper, digit, symbol))


def check_password_rules(password: str, *, username: str) -> None:
    """MLPS level 3: long enough, mixed classes, not the username; raises ValidationFailed."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationFailed("auth.password.too_short", min=PASSWORD_MIN_LENGTH)
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValidationFailed("auth.password.too_long", max=PASSWORD_MAX_LENGTH)
    if _character_classes(password) < PASSWORD_MIN_CLASSES:
        raise ValidationFailed("auth.password.too_simple", classes=PASSWORD_MIN_CLASSES)
    if username and password.casefold() == username.casefold():
        raise ValidationFailed("auth.password.same_as_username")
