"""Channel names and pushRefs: the alphabet that lets names be embedded verbatim elsewhere."""

from __future__ import annotations

import pytest

from livepush.protocol.channels import (
    KINDS,
    MAX_CHANNEL_LENGTH,
    SYSTEM,
    is_valid_user_id,
    parse_channel,
    push_channel,
    user_channel,
    validate_push_ref,
)
from livepush.protocol.errors import ErrorCode, ProtocolError

FORBIDDEN_ID_CHARACTERS = ["|", ",", " ", "\n", "\r", "\t", '"', "'", ":", "/", "\\", "<", "é"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_channel_kind_parses_into_kind_and_id(kind: str) -> None:
    assert parse_channel(f"{kind}:abc-123") == (kind, "abc-123")


def test_system_channel_has_empty_id() -> None:
    assert parse_channel(SYSTEM) == ("system", "")


@pytest.mark.parametrize(
    "ident", ["1", "a" * 128, "A-Z_a.z@example.com", "x=y+z", "0123456789", "UPPER_lower"]
)
def test_id_alphabet_and_length_limits_accepted(ident: str) -> None:
    assert parse_channel(f"workflow:{ident}") == ("workflow", ident)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "workflow",
        "workflow:",
        ":abc",
        "unknown:abc",
        "Workflow:abc",
        "system:1",
        "systems",
        " workflow:1",
        "workflow :1",
        "workflow:" + "a" * 129,
    ],
)
def test_malformed_channel_names_refused_as_invalid_channel(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_channel(name)
    assert info.value.code is ErrorCode.INVALID_CHANNEL


@pytest.mark.parametrize("char", FORBIDDEN_ID_CHARACTERS)
def test_channel_ids_with_forbidden_characters_refused(char: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_channel(f"workflow:ab{char}cd")
    assert info.value.code is ErrorCode.INVALID_CHANNEL


@pytest.mark.parametrize("char", ["\n", " "])
def test_trailing_newline_or_space_in_channel_id_refused(char: str) -> None:
    with pytest.raises(ProtocolError):
        parse_channel(f"workflow:abc{char}")


@pytest.mark.parametrize("name", [None, 42, b"workflow:1", ["workflow:1"], {"a": 1}])
def test_non_string_channel_names_refused(name: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_channel(name)
    assert info.value.code is ErrorCode.INVALID_CHANNEL


def test_channel_name_longer_than_maximum_refused() -> None:
    # Valid alphabet but longer than the overall channel name bound.
    name = "execution:" + "a" * (MAX_CHANNEL_LENGTH - len("execution:") + 1)
    with pytest.raises(ProtocolError):
        parse_channel(name)


def test_invalid_channel_message_names_the_channel() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_channel("nope:1")
    assert "nope:1" in info.value.message


@pytest.mark.parametrize("push_ref", ["a", "A" * 64, "abc_DEF-123", "0"])
def test_well_formed_push_refs_accepted(push_ref: str) -> None:
    assert validate_push_ref(push_ref) == push_ref


@pytest.mark.parametrize(
    "push_ref",
    ["", "a" * 65, "a b", "a|b", "a,b", "a\n", "a.b", "a@b", "a:b", 'a"b', None, 123, b"abc"],
)
def test_malformed_push_refs_refused_as_push_ref_invalid(push_ref: object) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_push_ref(push_ref)
    assert info.value.code is ErrorCode.PUSH_REF_INVALID


def test_push_and_user_channel_names_are_valid_channels() -> None:
    assert push_channel("tab-1") == "push:tab-1"
    assert parse_channel(push_channel("tab-1")) == ("push", "tab-1")
    assert user_channel("alice@example.com") == "user:alice@example.com"
    assert parse_channel(user_channel("alice@example.com")) == ("user", "alice@example.com")


@pytest.mark.parametrize(
    ("user_id", "valid"),
    [
        ("alice", True),
        ("alice@example.com", True),
        ("42", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("a b", False),
        ("a|b", False),
        ("a,b", False),
        ("a\n", False),
        (42, False),
        (None, False),
    ],
)
def test_user_ids_share_the_channel_id_alphabet(user_id: object, valid: bool) -> None:
    assert is_valid_user_id(user_id) is valid
