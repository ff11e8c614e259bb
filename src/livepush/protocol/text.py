"""User-supplied text that livepush itself puts in front of other users: what it removes.

The policy (docs/security.md): strings a user controls and the server shows to others as
*names* (a collaborator's `firstName`, `lastName`, `email`, from token claims) are cleaned
here: control characters (C0, DEL, C1) become a space or go, the bidirectional embedding,
override and isolate controls go (they can make a name read as something else, "Trojan
Source"), whitespace runs become one space, and the length is bounded. Letters of every
script, emoji and their joiners (U+200D) and the left-to-right / right-to-left marks stay.

What stays free-form data (presence `state`, cursor and selection data, awareness states,
CRDT document content such as node names) is bounded in size and depth, not rewritten: it is
relayed exactly as sent. Escaping is the renderer's job, always: render every such string as
text (`textContent`), never as markup.
"""

from __future__ import annotations

import re
from typing import Final

#: Longest name kept (characters).
MAX_NAME_LENGTH: Final = 256

_CONTROL = re.compile(
    "[\u0000-\u001f\u007f-\u009f]"  # C0, DEL, C1 (newlines and tabs included)
)
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")


def clean_name(value: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A user-supplied name as others may be shown it (see the module docstring)."""
    text = _BIDI.sub("", _CONTROL.sub(" ", value))
    return _SPACES.sub(" ", text).strip()[:max_length]
