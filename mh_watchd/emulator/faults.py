"""Scripted misbehaviour for the emulator: which requests fail, and how.

A plan is `{"seed": 1, "rules": [{"route", "fault", "status", "rate", "times", "retry_after",
"delay"}]}`. For each request the rules are tried in order and the first that fires wins. A rule
with `times` fires for the next n requests it applies to, then is spent; with `rate` it fires
with that probability (from the plan's seeded generator); with both, at most `times` times at
`rate`; with neither, on every request.

Each fault kind acts at one moment of a request:
- on arrival: `status` (answer that status, `Retry-After` when given), `reset` (drop the
  connection, after reading part of an upload's body), `slow` (sleep `delay`, then go on);
- after a create committed: `after_commit` (drop the connection before the answer);
- while sending a download: `truncate` (full Content-Length, half the body, then close).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

ROUTES: tuple[str, ...] = ("create", "get", "upload_urls", "upload", "download")
KINDS: tuple[str, ...] = ("status", "reset", "slow", "truncate", "after_commit")
ON_ARRIVAL: frozenset[str] = frozenset({"status", "reset", "slow"})
ON_COMMIT: frozenset[str] = frozenset({"after_commit"})
ON_BODY: frozenset[str] = frozenset({"truncate"})
# Faults that only make sense on one route.
_ONLY_ON: dict[str, str] = {"after_commit": "create", "truncate": "download"}
_RULE_KEYS = frozenset({"route", "fault", "status", "rate", "times", "retry_after", "delay"})


@dataclass(frozen=True)
class FaultRule:
    """One validated rule; see the module docstring."""

    route: str
    fault: str
    status: int | None = None
    rate: float | None = None
    times: int | None = None
    retry_after: float | None = None
    delay: float = 0.0


def _number(rule: dict[str, Any], key: str, where: str) -> float | None:
    value = rule.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}.{key} must be a number >= 0, got {value!r}")
    return float(value)


def parse_rules(doc: object) -> tuple[list[FaultRule], int | None]:
    """Return (rules, seed) from a fault plan document (a dict, or None for no faults).

    Raises ValueError naming the offending key (`rules[1].fault ...`) when the plan is invalid.
    """
    if doc is None:
        return [], None
    if not isinstance(doc, dict):
        raise ValueError("faults must be a JSON object with 'rules'")
    unknown = sorted(set(doc) - {"seed", "rules"})
    if unknown:
        raise ValueError(f"faults: unknown keys {unknown}; expected 'seed' and 'rules'")
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"faults.seed must be an integer, got {seed!r}")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ValueError("faults.rules must be a list")
    return [_parse_rule(raw, f"rules[{i}]") for i, raw in enumerate(raw_rules)], seed


def _parse_rule(raw: object, where: str) -> FaultRule:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(_RULE_KEYS)}")
    route = raw.get("route")
    if route not in ROUTES:
        raise ValueError(f"{where}.route {route!r} is not one of: {', '.join(ROUTES)}")
    fault = raw.get("fault")
    if fault not in KINDS:
        raise ValueError(f"{where}.fault {fault!r} is not one of: {', '.join(KINDS)}")
    if fault in _ONLY_ON and route != _ONLY_ON[fault]:
        raise ValueError(f"{where}: fault {fault!r} applies to route {_ONLY_ON[fault]!r} only")
    status = raw.get("status")
    if fault == "status":
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ValueError(f"{where}.status must be an HTTP status 400-599, got {status!r}")
    elif status is not None:
        raise ValueError(f"{where}.status only goes with fault 'status'")
    rate = _number(raw, "rate", where)
    if rate is not None and rate > 1:
        raise ValueError(f"{where}.rate must be between 0 and 1, got {rate}")
    times = raw.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise ValueError(f"{where}.times must be an integer >= 1, got {times!r}")
    delay = _number(raw, "delay", where)
    if fault == "slow" and delay is None:
        raise ValueError(f"{where}.delay is required for fault 'slow'")
    return FaultRule(
        route=str(route),
        fault=str(fault),
        status=status,
        rate=rate,
        times=times,
        retry_after=_number(raw, "retry_after", where),
        delay=delay or 0.0,
    )


class FaultPlan:
    """The live rules with their remaining `times` and the seeded generator; thread-safe."""

    def __init__(self, rules: list[FaultRule], seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules = list(rules)
        self._left = [rule.times for rule in rules]
        self._random = random.Random(seed)

    def pick(self, route: str, kinds: frozenset[str]) -> FaultRule | None:
        """Return the first rule for `route` among `kinds` that fires now, or None.

        A fired rule's `times` counts down; a rule with a `rate` draws from the seeded
        generator each time it is considered.
        """
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.route != route or rule.fault not in kinds:
                    continue
                left = self._left[index]
                if left is not None and left <= 0:
                    continue
                if rule.rate is not None and self._random.random() >= rule.rate:
                    continue
                if left is not None:
                    self._left[index] = left - 1
                return rule
        return None
