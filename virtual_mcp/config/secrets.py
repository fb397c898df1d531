"""Secret references: `tfy-secret://tenant:group:key`. The YAML only ever holds references, never values."""

from __future__ import annotations

import re
from dataclasses import dataclass

SECRET_SCHEME = "tfy-secret://"  # noqa: S105 - a URI scheme, not a secret
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
SECRET_REF_RE = re.compile(rf"tfy-secret://({_PART}):({_PART}):({_PART})")
_FULL_RE = re.compile(rf"^{SECRET_REF_RE.pattern}$")


@dataclass(frozen=True, slots=True)
class SecretRef:
    tenant: str
    group: str
    key: str

    @property
    def uri(self) -> str:
        return f"{SECRET_SCHEME}{self.tenant}:{self.group}:{self.key}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, text: str) -> SecretRef:
        m = _FULL_RE.match(text)
        if m is None:
            raise ValueError(f"not a secret reference (expected tfy-secret://tenant:group:key): {_describe(text)}")
        return cls(m.group(1), m.group(2), m.group(3))


def is_secret_ref(text: str) -> bool:
    return _FULL_RE.match(text) is not None


def refs_in(text: str) -> list[SecretRef]:
    """Every reference embedded in a template such as `Bearer tfy-secret://t:g:k`."""
    return [SecretRef(m.group(1), m.group(2), m.group(3)) for m in SECRET_REF_RE.finditer(text)]


def _describe(text: str) -> str:
    # Never echo what may be a literal secret: say what it looks like, not what it is.
    if text.startswith(SECRET_SCHEME):
        return f"malformed reference starting {text[:24]!r}"
    return f"a literal value of {len(text)} characters"
