"""Encryption at rest for what users send and get back: stored results (images, batch files, chunk
outputs) and the job payload columns (params, result). The one home of the crypto.

With `BITINGLIP_RESULTS_ENCRYPTION_KEYS` set (Fernet keys, newest first) every sealed value is a
Fernet token under the newest key behind a short marker, so a reader knows sealed bytes from plaintext
written before encryption was turned on (those stay readable and are sealed by the re-encrypt flow).
MultiFernet decrypts with any listed key, which is what makes rotation a matter of prepending a key.
Without keys nothing is sealed and behaviour is unchanged; a sealed value met without the key that
opens it is an error, never ciphertext handed out as if it were the result."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bitinglip.config import Settings
from bitinglip.errors import BitingLipError

MARKER = b"bitinglip-sealed:v1:"  # before the Fernet token in stored bytes
JSON_FIELD = "$sealed"  # a sealed JSON column holds {"$sealed": "<token>"}


class SealedDataError(BitingLipError):
    """Sealed data that none of the configured keys opens (a key was dropped too early, or none is set)."""

    code = "sealed_data"


class Cipher:
    def __init__(self, keys: list[str]) -> None:
        self._fernets = [Fernet(key.encode()) for key in keys]
        self._multi = MultiFernet(self._fernets) if self._fernets else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Cipher:
        return cls([key.get_secret_value() for key in settings.results_encryption_keys])

    @property
    def enabled(self) -> bool:
        return self._multi is not None

    # -- bytes (the result store)

    def seal(self, data: bytes) -> bytes:
        if self._multi is None:
            return data
        return MARKER + self._multi.encrypt(data)

    def open(self, data: bytes) -> bytes:
        if not is_sealed(data):
            return data
        return self._decrypt(data[len(MARKER) :])

    def reseal(self, data: bytes) -> bytes | None:
        """The same content sealed under the newest key, or None when it already is (rotation)."""
        if self._multi is None:
            return None
        if not is_sealed(data):
            return self.seal(data)
        token = data[len(MARKER) :]
        try:
            self._fernets[0].decrypt(token)
            return None
        except InvalidToken:
            pass
        try:
            return MARKER + self._multi.rotate(token)
        except InvalidToken as exc:
            raise SealedDataError("stored data is sealed under a key that is no longer configured") from exc

    def _decrypt(self, token: bytes) -> bytes:
        if self._multi is None:
            raise SealedDataError("stored data is encrypted and no BITINGLIP_RESULTS_ENCRYPTION_KEYS are configured")
        try:
            return self._multi.decrypt(token)
        except InvalidToken as exc:
            raise SealedDataError("stored data is sealed under a key that is no longer configured") from exc

    # -- JSON columns (job params and results)

    def seal_json(self, value: Any) -> Any:
        if self._multi is None or value is None:
            return value
        token = self._multi.encrypt(json.dumps(value, separators=(",", ":")).encode())
        return {JSON_FIELD: token.decode()}

    def open_json(self, value: Any) -> Any:
        if not is_sealed_json(value):
            return value
        return json.loads(self._decrypt(value[JSON_FIELD].encode()))

    def reseal_json(self, value: Any) -> Any | None:
        """The column value sealed under the newest key, or None when it already is (or is empty)."""
        if value is None:
            return None
        if not is_sealed_json(value):
            return self.seal_json(value) if self._multi is not None else None
        resealed = self.reseal(MARKER + value[JSON_FIELD].encode())
        return None if resealed is None else {JSON_FIELD: resealed[len(MARKER) :].decode()}


def is_sealed(data: bytes) -> bool:
    return data.startswith(MARKER)


def is_sealed_json(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {JSON_FIELD} and isinstance(value[JSON_FIELD], str)


def new_key() -> str:
    """A fresh key for BITINGLIP_RESULTS_ENCRYPTION_KEYS (prepend it to rotate)."""
    return Fernet.generate_key().decode()
