"""The names livepush shows to other users are cleaned (`protocol/text.py`)."""

from __future__ import annotations

import pytest

from livepush.auth.tokens import profile_of
from livepush.protocol.text import MAX_NAME_LENGTH, clean_name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Ada Lovelace", "Ada Lovelace"),
        ("Ada\nAdmin: approved\r\n", "Ada Admin: approved"),  # no line breaks to fake lines
        ("\x1b[31mred\x1b[0m", "[31mred [0m"),  # no terminal escapes
        ("evil\u202egnp.exe", "evilgnp.exe"),  # no bidi override ("Trojan Source")
        ("a\u2066b\u2069c", "abc"),  # no isolates
        ("  spaced \t out  ", "spaced out"),
        ("\u05e9\u05dc\u05d5\u05dd \u200fRTL", "\u05e9\u05dc\u05d5\u05dd \u200fRTL"),  # marks stay
        (
            "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
            "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
        ),
        ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),  # text: the renderer's
        ("\x00\x07", ""),
    ],
)
def test_clean_name(raw: str, shown: str) -> None:
    assert clean_name(raw) == shown


def test_length_is_bounded() -> None:
    assert len(clean_name("x" * 10_000)) == MAX_NAME_LENGTH


def test_profiles_from_claims_are_cleaned() -> None:
    profile = profile_of(
        {"firstName": "Ada\u202e", "given_name": "ignored", "lastName": "\n\n", "family_name": "L"}
    )
    assert profile == {"firstName": "Ada", "lastName": "L"}
