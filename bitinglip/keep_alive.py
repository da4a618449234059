"""Keep-alive durations, as Ollama takes them: how long a model stays loaded after its last request.

Requests, the load route and `BITINGLIP_MODEL_KEEP_ALIVE` all go through `parse`, so one value means
the same everywhere. A number is seconds; a string is a number of seconds or a Go-style duration
("300ms", "30s", "5m", "1h30m"); `0` unloads the model right after the request, `-1` (also "-1m" and
the like, which Ollama's docs use) keeps it loaded until it is evicted for room or unloaded by hand."""

from __future__ import annotations

import math
import re
from typing import TypeAlias

from pydantic import StrictFloat, StrictInt, StrictStr

from bitinglip.errors import InvalidRequest

FOREVER = -1.0
MAX_SECONDS = 30 * 86_400.0  # anything longer is a typo or a probe: -1 says "forever" on purpose
MAX_CHARS = 32

KeepAlive: TypeAlias = StrictStr | StrictInt | StrictFloat  # a request field; booleans are refused, not read as 1
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FOREVER = re.compile(r"-1(?:ms|s|m|h)?")
HINT = 'use a duration such as "30s", "5m" or "1h", 0 to unload right after, or -1 to keep it loaded'


def parse(value: str | int | float) -> float:
    """Seconds, or FOREVER; ValueError for anything else: other negatives, NaN, infinity, more than
    MAX_SECONDS, or text that is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration, not a boolean; {HINT}")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_CHARS:
            raise ValueError(f"keep_alive is longer than {MAX_CHARS} characters; {HINT}")
        if _FOREVER.fullmatch(text):
            return FOREVER
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
        else:
            raise ValueError(f"keep_alive {value[:MAX_CHARS]!r} is not a duration; {HINT}")
    elif isinstance(value, int) and abs(value) > MAX_SECONDS:
        seconds = math.inf  # float() of a big enough JSON integer would raise OverflowError
    else:
        seconds = float(value)
    if seconds == FOREVER:
        return FOREVER
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"keep_alive must be -1 (forever) or between 0 and {describe(MAX_SECONDS)}; {HINT}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"keep_alive must be at most {describe(MAX_SECONDS)} (-1 keeps a model loaded)")
    return seconds


def checked(value: str | int | float | None) -> float | None:
    """`parse` for a request: None (not given) stays None; a bad value is the caller's 400."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="keep_alive") from exc


def describe(seconds: float | None) -> str:
    """ "forever", or a short duration ("45s", "30m", "1h30m") for people reading `ps`."""
    if seconds is None or seconds == FOREVER:
        return "forever"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds * 1000:.0f}ms"
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join([f"{n}{unit}" for n, unit in parts if n][:2]) or "0s"  # two units are plenty


def longer(current: float, wanted: float) -> float:
    """The longer of two keep-alives (FOREVER is the longest)."""
    if FOREVER in (current, wanted):
        return FOREVER
    return max(current, wanted)
