"""Field encryption (SM4-GCM) and blind indexes (HMAC-SM3) behind a provider interface.

A certified cryptographic module (GB/T 39786) can replace SoftwareProvider by implementing
CryptoProvider; nothing else in the platform touches keys or algorithms.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from grassroots.kernel.files import fsync_directory

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 16  # SM4 has a 128-bit key
TOKEN_PREFIX = "sm4gcm"
# Keys given in this variable (JSON, as in the key file) win over the key file; they cannot be
# rotated by the platform because it cannot rewrite its own environment.
DATA_KEYS_ENV = "GRASSROOTS_DATA_KEYS"


class CryptoError(RuntimeError):
    """A ciphertext that cannot be decrypted, or a key that is missing or malformed."""


class CryptoProvider(Protocol):
    def encrypt(self, plaintext: str, *, context: str) -> str: ...

    def decrypt(self, token: str, *, context: str) -> str: ...

    def blind_index(self, value: str, *, context: str) -> str: ...

    def mac(self, data: bytes) -> tuple[str, str]: ...

    def verify_mac(self, data: bytes, mac_hex: str, key_id: str) -> bool: ...


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h.finalize()


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def sm4_gcm_encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(associated)
    body = encryptor.update(plaintext) + encryptor.finalize()
    return nonce + body + encryptor.tag


def sm4_gcm_decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("ciphertext too short")
    nonce, body, tag = blob[:NONCE_BYTES], blob[NONCE_BYTES:-TAG_BYTES], blob[-TAG_BYTES:]
    decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(associated)
    try:
        return decryptor.update(body) + decryptor.finalize()
    except InvalidTag as exc:
        raise CryptoError("ciphertext failed authentication (wrong key or altered data)") from exc


@dataclass(frozen=True)
class KeyRing:
    """Versioned data keys. New data uses `current`; old versions stay to decrypt until rotated out.

    The index and MAC keys are separate from the encryption keys so that rotating the encryption
    key does not change blind indexes (which would break look-ups) or the audit chain.
    """

    current: str
    data_keys: dict[str, bytes]
    index_key: bytes
    mac_keys: dict[str, bytes]
    current_mac: str

    @classmethod
    def generate(cls) -> KeyRing:
        return cls(current="k1", data_keys={"k1": secrets.token_bytes(KEY_BYTES)},
                   index_key=secrets.token_bytes(32), mac_keys={"m1": secrets.token_bytes(32)},
                   current_mac="m1")

    def to_json(self) -> str:
        def enc(value: bytes) -> str:
            return base64.b64encode(value).decode()

        return json.dumps({
            "current": self.current,
            "data_keys": {k: enc(v) for k, v in self.data_keys.items()},
            "index_key": enc(self.index_key),
            "mac_keys": {k: enc(v) for k, v in self.mac_keys.items()},
            "current_mac": self.current_mac,
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        try:
            raw = json.loads(text)
            ring = cls(
                current=raw["current"],
                data_keys={k: base64.b64decode(v) for k, v in raw["data_keys"].items()},
                index_key=base64.b64decode(raw["index_key"]),
                mac_keys={k: base64.b64decode(v) for k, v in raw["mac_keys"].items()},
                current_mac=raw["current_mac"],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CryptoError(f"malformed key file: {exc}") from exc
        if ring.current not in ring.data_keys or ring.current_mac not in ring.mac_keys:
            raise CryptoError("key file names a current key it does not hold")
        if any(len(k) != KEY_BYTES for k in ring.data_keys.values()):
            raise CryptoError("every SM4 data key must be 16 bytes")
        return ring

    def rotated(self) -> KeyRing:
        """A ring with a fresh current data key; older keys kept for decryption."""
        number = max(int(k.lstrip("k")) for k in self.data_keys) + 1
        new_id = f"k{number}"
        keys = dict(self.data_keys)
        keys[new_id] = secrets.token_bytes(KEY_BYTES)
        return KeyRing(current=new_id, data_keys=keys, index_key=self.index_key,
                       mac_keys=self.mac_keys, current_mac=self.current_mac)

    def without(self, key_ids: Iterable[str]) -> KeyRing:
        """A ring with the given old data keys removed; the current key can never be dropped."""
        drop = set(key_ids)
        if self.current in drop:
            raise CryptoError(f"key {self.current!r} is the current data key and cannot be retired")
        unknown = drop - self.data_keys.keys()
        if unknown:
            raise CryptoError(f"no such data key: {', '.join(sorted(unknown))}")
        keys = {k: v for k, v in self.data_keys.items() if k not in drop}
        return KeyRing(current=self.current, data_keys=keys, index_key=self.index_key,
                       mac_keys=self.mac_keys, current_mac=self.current_mac)


class SoftwareProvider:
    """SM4-GCM and HMAC-SM3 in software (OpenSSL through `cryptography`)."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def encrypt(self, plaintext: str, *, context: str) -> str:
        key_id = self.ring.current
        blob = sm4_gcm_encrypt(self.ring.data_keys[key_id], plaintext.encode(),
                               _associated(context, key_id))
        return f"{TOKEN_PREFIX}:{key_id}:{base64.urlsafe_b64encode(blob).decode()}"

    def decrypt(self, token: str, *, context: str) -> str:
        try:
            prefix, key_id, body = token.split(":", 2)
        except ValueError as exc:
            raise CryptoError("not an encrypted value") from exc
        if prefix != TOKEN_PREFIX or key_id not in self.ring.data_keys:
            raise CryptoError(f"unknown key {key_id!r}")
        blob = base64.urlsafe_b64decode(body.encode())
        return sm4_gcm_decrypt(self.ring.data_keys[key_id], blob,
                               _associated(context, key_id)).decode()

    def key_id_of(self, token: str) -> str:
        parts = token.split(":", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise CryptoError("not an encrypted value")
        return parts[1]

    def reencrypt(self, token: str, *, context: str) -> str:
        """The same plaintext under the current data key; a token already on it comes back as is."""
        if self.key_id_of(token) == self.ring.current:
            return token
        return self.encrypt(self.decrypt(token, context=context), context=context)

    def blind_index(self, value: str, *, context: str) -> str:
        return hmac_sm3(self.ring.index_key, f"{context}\x00{value}".encode()).hex()

    def mac(self, data: bytes) -> tuple[str, str]:
        """(key id, hex HMAC-SM3) with the current MAC key."""
        key_id = self.ring.current_mac
        return key_id, hmac_sm3(self.ring.mac_keys[key_id], data).hex()

    def verify_mac(self, data: bytes, mac_hex: str, key_id: str) -> bool:
        key = self.ring.mac_keys.get(key_id)
        if key is None:
            return False
        return secrets.compare_digest(hmac_sm3(key, data).hex(), mac_hex)


def _associated(context: str, key_id: str) -> bytes:
    # Binding the field name stops a ciphertext being copied from one column into another.
    return f"grassroots:{context}:{key_id}".encode()


def load_key_ring(path: Path, *, create: bool) -> KeyRing:
    """Read the key file; in the demo and tests create it (mode 0600) when it is missing."""
    env_value = os.environ.get(DATA_KEYS_ENV)
    if env_value:
        return KeyRing.from_json(env_value)
    if path.exists():
        return KeyRing.from_json(path.read_text(encoding="utf-8"))
    if not create:
        raise CryptoError(f"key file {path} is missing (set GRASSROOTS_DATA_KEY_FILE)")
    ring = KeyRing.generate()
    write_key_ring(path, ring)
    return ring


def write_key_ring(path: Path, ring: KeyRing) -> None:
    """Replace the key file atomically and durably: a key must be on disk before data uses it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(ring.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


