"""Training: StarCoder2's data format, a few real optimizer steps, exact resume, checkpoints both loaders read."""

from __future__ import annotations

import random

import pytest
import torch
from oracle import load_reference
from safetensors import safe_open

from sc2cli.train import data as trainset
from sc2cli.model.transformer import Starcoder2ForCausalLM
from sc2cli.tokenizer import SPECIAL_TOKENS, Tokenizer
from sc2cli.train.trainer import ModelShape, TrainSettings, build_model, learning_rate, next_token_loss, train

CORPUS = {
    "pkg/__init__.py": "from .core import add\n",
    "pkg/core.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n" * 6,
    "pkg/util.py": "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n" * 6,
    "tools/run.py": "import sys\n\nfor arg in sys.argv[1:]:\n    print(arg.upper())\n" * 6,
    "tools/more.py": "class Box:\n    def __init__(self, value):\n        self.value = value\n" * 6,
    ".hidden/skip.py": "print('never read')\n",
    "notes.txt": "not python\n",
}

SHAPE = ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, sliding_window=24, max_position_embeddings=128, vocab_size=320)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "src"
    for path, text in CORPUS.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def _settings(corpus, out, **kw) -> TrainSettings:
    base = dict(data=str(corpus), out=str(out), seq_len=48, batch_size=2, max_steps=6, warmup_steps=2, save_every=3,
                eval_every=3, heldout_fraction=0.0, shape=SHAPE)
    base.update(kw)
    return TrainSettings(**base)


def test_collect_files_skips_hidden_and_other_suffixes(corpus):
    paths = [f.path for f in trainset.collect_files(corpus)]
    assert paths == sorted(p for p in CORPUS if p.endswith(".py") and not p.startswith("."))


def test_heldout_split_is_by_path_hash_and_stable():
    files = [trainset.SourceFile(f"m{i}.py", "x = 1\n") for i in range(400)]
    train_a, held_a = trainset.split_files(files, 0.1)
    train_b, held_b = trainset.split_files(list(reversed(files)), 0.1)
    assert {f.path for f in held_a} == {f.path for f in held_b}
    assert 15 <= len(held_a) <= 70 and len(train_a) + len(held_a) == 400


def test_documents_follow_starcoder2_format():
    files = [trainset.SourceFile("a.py", "x = 1\ny = 2\n"), trainset.SourceFile("b.py", "z = 3\n")]
    seen_meta = seen_plain = seen_fim = False
    for seed in range(60):
        doc = trainset.format_document(files, random.Random(seed), "org/repo")
        assert doc.endswith("<|endoftext|>")
        assert doc.count("<file_sep>") == 2
        if doc.startswith("<repo_name>org/repo<file_sep>"):
            seen_meta = True
            assert "a.py\n" in doc and "b.py\n" in doc
        else:
            seen_plain = True
            assert doc.startswith("<file_sep>") and "a.py" not in doc
        for section in doc.removesuffix("<|endoftext|>").split("<file_sep>")[1:]:
            if "<fim_prefix>" not in section:
                continue
            seen_fim = True
            prefix, rest = section.split("<fim_prefix>")[1].split("<fim_suffix>")
            suffix, middle = rest.split("<fim_middle>")
            prefix = prefix.removeprefix("a.py\n").removeprefix("b.py\n")
            assert prefix + middle + suffix in ("x = 1\ny = 2\n", "z = 3\n")  # PSM: the middle comes last
    assert seen_meta and seen_plain and seen_fim


def test_pieces_cut_at_line_boundaries():
    text = "".join(f"line_{i} = {i}\n" for i in range(100))
    parts = trainset.pieces(trainset.SourceFile("f.py", text), 120)
    assert "".join(p.text for p in parts) == text
    assert all(len(p.text) <= 120 and p.text.endswith("\n") for p in parts)


def test_learning_rate_schedule():
    s = TrainSettings(data=".", out=".", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert learning_rate(0, s) == pytest.approx(0.1)
    assert learning_rate(9, s) == pytest.approx(1.0)
    assert learning_rate(60, s) == pytest.approx(0.55)
    assert learning_rate(110, s) == pytest.approx(0.1)


def test_training_loss_is_the_reference_next_token_loss(tmp_path):
    """The objective is predicting token t+1 from tokens <= t, exactly as transformers' `labels=input_ids` loss
    (a shifted-twice objective would train a model that predicts two tokens ahead)."""
    settings = TrainSettings(data=".", out=str(tmp_path), shape=SHAPE)
    from sc2cli.train.bpe import train_bpe

    tokenizer = Tokenizer(train_bpe(CORPUS.values(), SHAPE.vocab_size))
    model = build_model(settings, tokenizer)
    model.save_pretrained(tmp_path)
    ref = load_reference("Starcoder2ForCausalLM", tmp_path)
    rows = torch.randint(0, tokenizer.vocab_size, (3, 33))
    with torch.no_grad():
        ours = next_token_loss(model, rows).item()
        theirs = ref(rows, labels=rows).loss.item()
    assert abs(ours - theirs) <= 1e-5


@pytest.mark.slow
def test_training_lowers_loss_and_writes_a_reference_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    state = train(_settings(corpus, out, max_steps=12, save_every=12, eval_every=6, lr=3e-3))
    first, last = state.history[0][2], state.history[-1][2]
    assert last < first
    tokenizer = Tokenizer.from_dir(out)
    assert [tokenizer.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert len(tokenizer.encode("12345")) == 5  # digits split one per token
    ours = Starcoder2ForCausalLM.from_pretrained(out)
    assert ours.config.sliding_window == 24 and ours.config.num_key_value_heads == 2
    ref = load_reference("Starcoder2ForCausalLM", out)
    ids = torch.tensor([tokenizer.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids).logits).abs().max().item() <= 1e-5
        # What training lowered is the reference's own next-token loss on the training text.
        untrained = build_model(_settings(corpus, tmp_path / "unused"), tokenizer)
        assert ref(ids, labels=ids).loss.item() < untrained(ids, labels=ids).loss.item() - 0.5
    with safe_open(out / "optimizer.safetensors", "pt") as f:
        assert any(k.endswith("::exp_avg") for k in f.keys())


@pytest.mark.slow
def test_stopped_run_resumes_exactly(corpus, tmp_path):
    whole = train(_settings(corpus, tmp_path / "whole"))
    train(_settings(corpus, tmp_path / "parts"), stop_after=3)
    resumed = train(_settings(corpus, tmp_path / "parts"))
    assert resumed.step == whole.step == 6
    assert [h[2] for h in resumed.history] == [h[2] for h in whole.history]
    a = Starcoder2ForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    b = Starcoder2ForCausalLM.from_pretrained(tmp_path / "parts").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_checkpoint(corpus, tmp_path):
    base = tmp_path / "base"
    train(_settings(corpus, base, max_steps=2))
    tuned = tmp_path / "tuned"
    train(_settings(corpus, tuned, init=str(base), max_steps=1, lr=1e-9, warmup_steps=1))
    a = Starcoder2ForCausalLM.from_pretrained(base).state_dict()
    b = Starcoder2ForCausalLM.from_pretrained(tuned).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # a tiny step from the same weights
    assert Tokenizer.from_dir(tuned).vocab_size == Tokenizer.from_dir(base).vocab_size


# ---- FIM spans, repositories, streaming rows ---------------------------------------------------------------------

BLOCKY = ("import os\n\n\ndef load(path):\n    with open(path) as f:\n        text = f.read()\n    return text\n\n\n"
          "class Store:\n    def __init__(self):\n        self.items = {}\n\n    def put(self, key, value):\n"
          "        self.items[key] = value\n")


def test_fim_spans_cover_what_editors_ask_for():
    assert sum(share for _, share in trainset.SPANS) == pytest.approx(1.0)
    whole_lines = 0
    for seed in range(400):
        prefix, middle, suffix = trainset.fim_split(BLOCKY, random.Random(seed))
        assert prefix + middle + suffix == BLOCKY
        if (not prefix or prefix.endswith("\n")) and middle.endswith("\n"):
            whole_lines += 1
    assert whole_lines > 400 * 0.5  # one line, a few lines, blocks: most middles are whole lines


def test_a_block_span_is_the_body_a_line_opens():
    lines = BLOCKY.splitlines(keepends=True)
    opener = lines.index("def load(path):\n")
    start, end = trainset._block(lines, opener)
    assert "".join(lines[start:end]) == ("    with open(path) as f:\n        text = f.read()\n    return text\n")
    inner = lines.index("        self.items = {}\n")
    start, end = trainset._block(lines, inner)
    assert "".join(lines[start:end]) == "        self.items = {}\n"


def test_documents_hold_files_of_one_repository():
    files = [trainset.SourceFile(f"{repo}/m{i}.py", f"# {repo} {i}\nx = {i}\n", repo)
             for repo in ("alpha", "beta", "gamma") for i in range(8)]
    docs = list(trainset.epoch_documents(files, seed=0, epoch=0, piece_chars=200, repo_name="unused", fim_rate=0.0))
    assert sum(doc.count("<file_sep>") for doc in docs) == len(files)  # every file once
    for doc in docs:
        repos = {repo for repo in ("alpha", "beta", "gamma") if f"# {repo} " in doc}
        assert len(repos) == 1, doc
        if doc.startswith("<repo_name>"):
            assert doc.startswith(f"<repo_name>{repos.pop()}<file_sep>")


def test_rows_stream_deterministically_and_resume_mid_epoch(corpus):
    from sc2cli.train.bpe import train_bpe

    files = trainset.collect_files(corpus)
    tokenizer = Tokenizer(train_bpe((f.text for f in files), SHAPE.vocab_size))
    args = (files, tokenizer, 16, 0, "org/repo", 0.5)
    first = [row.tolist() for row in trainset.epoch_rows(*args[:4], 0, *args[4:])]
    again = [row.tolist() for row in trainset.epoch_rows(*args[:4], 0, *args[4:])]
    assert first == again and len(first) > 6 and all(len(row) == 17 for row in first)
    # Tokenized a few documents at a time: the same packed rows (the stream runs on across blocks), in another order.
    small_blocks = [row.tolist() for row in trainset.epoch_rows(*args[:4], 0, *args[4:], block_docs=3)]
    assert sorted(small_blocks) == sorted(first) and small_blocks != first
    per_epoch = len(first) // 2  # batches of 2 rows (an odd last row is left)
    whole = trainset.Batches(*args, batch_size=2)
    seen = [whole.next().tolist() for _ in range(per_epoch + 3)]  # into the second epoch
    assert whole.epoch == 1 and seen[0] == first[:2]
    assert seen[per_epoch - 1] == first[2 * per_epoch - 2:2 * per_epoch]
    for k in (1, per_epoch - 1, per_epoch + 1, per_epoch + 2):
        epoch, batch = divmod(k, per_epoch)
        resumed = trainset.Batches(*args, batch_size=2, epoch=epoch, row=2 * batch)
        assert resumed.next().tolist() == seen[k], k


def test_middle_share_is_measured():
    files = [trainset.SourceFile(f"m{i}.py", BLOCKY * 3) for i in range(30)]
    from sc2cli.train.bpe import train_bpe

    tokenizer = Tokenizer(train_bpe((f.text for f in files), SHAPE.vocab_size))
    share = trainset.middle_share(files, tokenizer, 64, docs=50)
    assert 0.0 < share < 0.5
    assert trainset.middle_share(files, tokenizer, 64, fim_rate=0.0, docs=50) == 0.0
