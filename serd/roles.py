"""Whose voice a channel carries, and whether serd may judge it.

Every input channel has a *role*: ``customer`` (the caller's side of the line), ``agent``
(the employee's side), ``unspecified`` (nothing declared) or another value the deployer
declares.  Only channels whose role is in ``audio.analyse_roles`` are classified; an
``agent`` channel can never be analysed: inferring the emotions of people at work is
prohibited in the EU (AI Act Art. 5(1)(f)), so the role is refused in that list.  An agent
channel may still be captured, only to mute the other channels while the agent speaks
(:mod:`serd.crosstalk`).  docs/lawful-use.md explains the rules behind this.

A channel is written in ``audio.channels`` either as a bare name, whose role is inferred
from its words (``agent``, ``agent_left``, ``Agent2`` -> agent; ``customer``, ``caller_1``
-> customer; anything else -> unspecified, so an existing configuration keeps working),
or as ``{name: ..., role: ...}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from serd.validate import require

CUSTOMER = "customer"
AGENT = "agent"
UNSPECIFIED = "unspecified"

DEFAULT_ANALYSED = (CUSTOMER, UNSPECIFIED)
"""Roles analysed unless ``audio.analyse_roles`` says otherwise."""

LAWFUL_USE_DOC = "docs/lawful-use.md"

_ROLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
_WORD_RE = re.compile(r"[a-z]+")


def infer_role(name: str) -> str:
    """The role of a channel written as a bare name.

    By its words, not the whole name: ``agent_left``, ``Agent2`` or ``agent-mic`` is the
    agent's side as surely as ``agent`` is, and analysing it as ``unspecified`` would
    judge the worker.  A name with an agent word is the agent's even if it also names the
    customer (never analysed is the safe side).
    """
    words = _WORD_RE.findall(name.lower())
    if any(w.startswith(AGENT) for w in words):
        return AGENT
    if any(w.startswith((CUSTOMER, "caller")) for w in words):
        return CUSTOMER
    return UNSPECIFIED


def check_role(role: str, key: str) -> None:
    """``ValueError`` naming ``key`` unless ``role`` is a usable role word."""
    require(bool(_ROLE_RE.match(role)), key,
            f"{role!r} is not a role: use customer, agent, unspecified or another lower-case "
            "word (a-z, 0-9, _ or -)")


@dataclass(frozen=True)
class ChannelSpec:
    """One input channel, in device channel order (``audio.channels`` entry)."""

    name: str
    """Name in events and topics, e.g. ``customer``."""
    role: str | None = None
    """customer, agent, unspecified or another declared word; null = inferred from the
    name's words (:func:`infer_role`: agent_left -> agent, caller_1 -> customer, else
    unspecified)."""

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must be non-empty")
        if self.role is not None:
            check_role(self.role, "role")

    @property
    def resolved_role(self) -> str:
        return self.role if self.role is not None else infer_role(self.name)


@dataclass(frozen=True)
class Channel:
    """A channel with its role resolved, and what serd does with it."""

    index: int
    """Column of the device's (or file's) channels."""
    name: str
    role: str
    analysed: bool
    """Classified (its role is in ``audio.analyse_roles``)."""
    declared: bool
    """The role was written in the configuration (not inferred from the name)."""

    @property
    def mutes_others(self) -> bool:
        """An agent channel is used (only) to mute the analysed channels while it speaks."""
        return self.role == AGENT


def resolve(entries: Sequence[str | ChannelSpec], analyse_roles: Sequence[str]) -> list[Channel]:
    """``audio.channels`` entries as :class:`Channel` objects, in channel order."""
    out = []
    for i, entry in enumerate(entries):
        spec = entry if isinstance(entry, ChannelSpec) else ChannelSpec(entry)
        role = spec.resolved_role
        out.append(Channel(i, spec.name, role, role in analyse_roles and role != AGENT,
                           spec.role is not None))
    return out


def parse_channels_flag(text: str) -> tuple[ChannelSpec, ...]:
    """``--channels agent,customer`` or ``--channels left:agent,right:customer``."""
    specs = []
    for i, part in enumerate(text.split(",")):
        name, sep, role = part.strip().partition(":")
        require(bool(name.strip()), "--channels",
                f"entry {i + 1} has no name (e.g. agent,customer or left:agent,right:customer)")
        specs.append(ChannelSpec(name.strip(), role.strip() if sep else None))
    names = [s.name for s in specs]
    require(len(set(names)) == len(names), "--channels", "names must be unique")
    return tuple(specs)


def describe(channels: Sequence[Channel]) -> str:
    """One line: which channels are analysed, under which role (``serd --check-config``)."""
    parts = []
    for c in channels:
        how = "" if c.declared else ", inferred from its name"
        if c.analysed:
            what = f"analysed as {c.role}{how}"
        elif c.mutes_others:
            what = "agent: never analysed, mutes the analysed channels while it speaks"
        else:
            what = f"{c.role}{how}: not analysed (not in audio.analyse_roles)"
        parts.append(f"{c.index}:{c.name} ({what})")
    return "channels: " + "; ".join(parts)
