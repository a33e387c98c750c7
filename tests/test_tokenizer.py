import random

import pytest
from tokenizer_fixture import TEST_VOCAB_SIZE, build_test_tokenizer, train_test_tokenizer, write_test_tokenizer

from sc2cli.tokenizer import SPECIAL_TOKENS, IncrementalDetokenizer, Tokenizer

UNICODE_TEXTS = [
    "café naïve 日本語 😀",
    "def 鰻(x):  # 🦀🦀 ok\n    return 'ünïcödé' + \"Ελληνικά\"\n",
    "emoji ZWJ 👩‍💻 flag 🇯🇵 skin 👍🏽 and U+FFFD \ufffd itself",
    "mixed\tTABS\r\nCRLF  \n\n\n   日本語のテキスト🎉",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(write_test_tokenizer(tmp_path_factory.mktemp("ckpt")).parent)


def stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    return [detok.add(i) for i in ids] + [detok.flush()]


# --- the test tokenizer itself -----------------------------------------------------------------------------


def test_test_tokenizer_is_deterministic_and_sized() -> None:
    first, second = train_test_tokenizer(), train_test_tokenizer()
    assert first.to_str() == second.to_str()
    assert first.get_vocab_size() == TEST_VOCAB_SIZE
    assert build_test_tokenizer().to_str() == first.to_str()


def test_build_test_tokenizer_saves_to_path(tmp_path) -> None:
    path = tmp_path / "t.json"
    built = build_test_tokenizer(path)
    assert Tokenizer.from_file(path).encode("def f(x): pass") == built.encode("def f(x): pass").ids


# --- ids and special tokens --------------------------------------------------------------------------------


def test_special_tokens_have_ids_in_spec_order(tok: Tokenizer) -> None:
    assert len(SPECIAL_TOKENS) == len(set(SPECIAL_TOKENS)) == 38
    assert SPECIAL_TOKENS[0] == "<|endoftext|>" and SPECIAL_TOKENS[-1] == "<PASSWORD>"
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(38))
    assert tok.token_id("<fim_prefix>") == 1
    assert tok.token_id("<fim_middle>") == 2
    assert tok.token_id("<fim_suffix>") == 3
    assert tok.token_id("<file_sep>") == 6
    assert tok.eos_id == 0
    assert tok.vocab_size == TEST_VOCAB_SIZE


def test_unknown_token_lookup(tok: Tokenizer) -> None:
    with pytest.raises(KeyError, match="<filename>"):
        tok.token_id("<filename>")  # StarCoder1-only token
    assert tok.special_id("<filename>") is None
    assert tok.special_id("<repo_name>") == 5


def test_special_strings_in_text_become_special_ids(tok: Tokenizer) -> None:
    ids = tok.encode("<fim_prefix>a<fim_suffix>b<fim_middle>")
    assert ids[0] == 1 and ids[-1] == 2 and 3 in ids
    assert ids.count(1) == 1 and ids.count(2) == 1
    # Splitting at the specials gives the plain encodings of the text between them.
    assert ids == [1, *tok.encode("a"), 3, *tok.encode("b"), 2]


# --- encode / decode ---------------------------------------------------------------------------------------


def test_encode_adds_no_bos_or_eos(tok: Tokenizer) -> None:
    ids = tok.encode("x = 1")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "x = 1"
    assert tok.encode("") == []


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n\treturn x\t# tab\n",
        "a\r\nb\r\n",
        "line with trailing spaces   \n",
        "a\n\n\n\nb",
        "   leading and inner    gaps  ",
        "x = 12345 + 0.5e-3",
        *UNICODE_TEXTS,
    ],
)
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_random_unicode(tok: Tokenizer) -> None:
    rng = random.Random(0)
    planes = [(0x20, 0x7F), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x20000)]
    for _ in range(50):
        text = "".join(chr(rng.randrange(*rng.choice(planes))) for _ in range(rng.randrange(1, 40)))
        assert tok.decode(tok.encode(text)) == text


def test_digits_are_one_token_each(tok: Tokenizer) -> None:
    ids = tok.encode("12345")
    assert len(ids) == 5
    assert [tok.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]


def test_decode_does_no_space_clean_up(tok: Tokenizer) -> None:
    text = "a , b . c ; don 't"
    assert tok.decode(tok.encode(text)) == text


def test_decode_skip_special_tokens(tok: Tokenizer) -> None:
    ids = [tok.token_id("<file_sep>"), *tok.encode("x = 1"), tok.token_id("<|endoftext|>")]
    assert tok.decode(ids) == "<file_sep>x = 1<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == "x = 1"


# --- loading errors ----------------------------------------------------------------------------------------


def test_from_dir_without_tokenizer_json(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Tokenizer.from_dir(tmp_path)


def test_from_file_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.from_file(tmp_path / "nope.json")


@pytest.mark.parametrize("content", ["{not json", '{"version": "1.0"}', ""])
def test_corrupt_tokenizer_json(tmp_path, content: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="tokenizer.json") as info:
        Tokenizer.from_dir(tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- incremental detokenizer -------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [False, True])
def test_stream_equals_full_decode_for_random_ids(tok: Tokenizer, skip: bool) -> None:
    rng = random.Random(1234)
    for _ in range(100):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(0, 60))]
        if rng.random() < 0.5:  # bias towards specials, which random draws rarely hit
            ids += [rng.randrange(len(SPECIAL_TOKENS)) for _ in range(5)]
            rng.shuffle(ids)
        assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("skip", [False, True])
def test_stream_equals_full_decode_for_single_byte_tokens(tok: Tokenizer, skip: bool) -> None:
    # Lone lead bytes, continuation bytes and specials between the bytes of one character.
    byte_ids = [tok.encode(chr(c))[0] for c in range(0x20, 0x7F)]  # ASCII
    lead = tok.token_id("ð")  # byte 0xF0 in the byte-level alphabet
    cont = tok.token_id("Ģ")  # byte 0x80
    rng = random.Random(7)
    pool = byte_ids[:5] + [lead, cont, 0, 6]
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randrange(1, 30))]
        assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)
    ids = [lead] * 40 + byte_ids[:3]
    assert "".join(stream(tok, ids)) == tok.decode(ids)


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_stream_of_real_text_never_splits_a_character(tok: Tokenizer, text: str) -> None:
    chunks = stream(tok, tok.encode(text))
    assert "".join(chunks) == text
    if "\ufffd" not in text:
        assert not any("\ufffd" in c for c in chunks)


def test_character_split_over_tokens_is_emitted_whole(tok: Tokenizer) -> None:
    for char in ["🦀", "鰻"]:  # absent from the training corpus, so several byte tokens
        ids = tok.encode(char)
        assert len(ids) > 1
        chunks = stream(tok, [*tok.encode("x"), *ids, *tok.encode("y")])
        assert chunks[0] == "x"
        assert chunks[1 : len(ids)] == [""] * (len(ids) - 1)
        assert chunks[len(ids)] == char
        assert "".join(chunks) == f"x{char}y"


def test_stream_skips_special_tokens(tok: Tokenizer) -> None:
    crab = tok.encode("🦀")
    ids = [tok.token_id("<fim_middle>"), *crab[:1], tok.token_id("<file_sep>"), *crab[1:]]
    assert "".join(stream(tok, ids, skip_special_tokens=True)) == "🦀"
    kept = stream(tok, ids)
    assert "".join(kept) == tok.decode(ids)
    assert kept[0] == "<fim_middle>"


def test_flush_releases_incomplete_tail(tok: Tokenizer) -> None:
    crab = tok.encode("🦀")
    detok = IncrementalDetokenizer(tok)
    assert detok.add(crab[0]) == ""
    assert detok.flush() == tok.decode(crab[:1])
    assert detok.flush() == ""


def test_text_ending_in_replacement_char_is_held_until_next_token(tok: Tokenizer) -> None:
    ids = tok.encode("a\ufffd")
    chunks = stream(tok, [*ids, *tok.encode("b")])
    assert "".join(chunks) == "a\ufffdb"
    assert "".join(chunks[: len(ids)]) == "a"  # a trailing U+FFFD may be an incomplete character
    assert chunks[len(ids)] == "\ufffdb"


def test_stream_decodes_a_bounded_window(tok: Tokenizer) -> None:
    decoded_lengths: list[int] = []

    class Spy(Tokenizer):
        def decode(self, ids, skip_special_tokens=False):
            ids = list(ids)
            decoded_lengths.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    ids = tok.encode("def f(x):\n    return x + 1  # 🦀 日本語\n" * 100)
    spy = Spy(build_test_tokenizer())
    assert "".join(stream(spy, ids)) == tok.decode(ids)
    assert len(ids) > 1000 and max(decoded_lengths) <= 8  # no re-decoding of the whole sequence
