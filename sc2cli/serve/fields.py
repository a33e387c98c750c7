"""Reading a request's JSON body one field at a time: a field sc2 uses with the wrong type or out of range is a
`BadRequest` that names it; fields sc2 does not use are ignored (clients send many: `model`, `samplers`, `lora`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..generation.params import MAX_SEED


class BadRequest(Exception):
    """A request the server refuses: `status` (a 4xx), a message for the client, the protocol's error `kind`."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param
        self.headers = dict(headers or {})


def parse_object(raw: bytes) -> dict:
    """The body as a JSON object."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON: {err}") from None
    except RecursionError:  # a body nested deeper than the parser's recursion limit ("[[[[…")
        raise BadRequest("the body is not valid JSON: it is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


class Fields:
    """Typed access to a JSON object's fields; `where` prefixes the names in messages (e.g. "options.")."""

    def __init__(self, body: Mapping[str, Any], where: str = "") -> None:
        self.body = body
        self.where = where

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def _bad(self, name: str, what: str) -> BadRequest:
        return BadRequest(f'"{self.where}{name}" must be {what}', param=self.where + name)

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise BadRequest(f'"{self.where}{name}" is required', param=self.where + name)
            return default
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def integer(self, name: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._bad(name, f"an integer from {low} to {high}" if high is not None else f"at least {low}")
        return value

    def number(self, name: str, default: float, low: float | None = None, high: float | None = None) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._bad(name, "a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._bad(name, f"a number from {low} to {high}")
        return float(value)

    def seed(self, name: str = "seed") -> int | None:
        """A seed; −1 (or absent) is a random one."""
        value = self.integer(name, None, -1, MAX_SEED)
        return None if value is None or value < 0 else value

    def stops(self, name: str = "stop", string_alone: bool = True) -> tuple[str, ...]:
        """Stop strings: an array of strings (empty ones dropped), or one string where `string_alone`."""
        value = self.body.get(name)
        if value is None:
            return ()
        if isinstance(value, str) and string_alone:
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise self._bad(name, "an array of strings" + (" or a string" if string_alone else ""))
        return tuple(s for s in value if s)

    def section(self, name: str) -> Fields:
        value = self.body.get(name)
        if value is None:
            return Fields({}, f"{self.where}{name}.")
        if not isinstance(value, dict):
            raise self._bad(name, "an object")
        return Fields(value, f"{self.where}{name}.")
