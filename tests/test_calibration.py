"""Calibration data (slicer.importance.calibration): every format gives the batch its definition
says (texts tokenized one at a time, token ids as they are, concatenated and cut into rows),
the record of what was used, the underdetermined-statistic warning, and bad input.

The reference batch is written here from the definition with the tokenizer itself; no model
runs except in the one end-to-end test (a tiny Llama, as tests/test_importance.py builds).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from slicer.cli import main  # noqa: E402
from slicer.errors import SlicerError  # noqa: E402
from slicer.importance import calibration as calib  # noqa: E402
from slicer.importance.calibration import Source, load, underdetermined, warn_underdetermined  # noqa: E402

WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "on", "sea", "bread", "light", "river", "map", "snow"]
TEXTS = ["the sea and the light", "the river was on the map in the snow", "a bread of light",
         "it is the snow on the sea", "the map of the river and the sea"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A teacher folder holding only a word-level tokenizer (load reads nothing else for text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    out = tmp_path_factory.mktemp("calib-teacher")
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(out)
    return out


def reference(folder, records, samples, seq_len) -> torch.Tensor:
    """The definition: texts tokenized one at a time, ids as they are, concatenated, cut into rows."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = []
    for r in records:
        ids += tok(r)["input_ids"] if isinstance(r, str) else list(r)
    rows = min(samples, len(ids) // seq_len)
    return torch.tensor(ids[:rows * seq_len]).view(rows, seq_len)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_text_file_is_its_paragraphs_tokenized_and_recorded(folder, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TEXTS) + "\n")
    got = load(path, folder, samples=3, seq_len=7)
    assert torch.equal(got.inputs["input_ids"], reference(folder, TEXTS, 3, 7))
    assert got.describe() == {"source": str(path), "format": "text", "sha256": sha(path), "shape": {"input_ids": [3, 7]},
                              "tokens": 21, "sequences": 3}


def test_jsonl_texts_give_the_same_batch_as_the_same_text_file(folder, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS[:2]))
                    + "\n\n" + "\n".join(json.dumps(t) for t in TEXTS[2:]) + "\n")  # objects, a blank line, strings
    got = load(path, folder, samples=3, seq_len=7)
    assert torch.equal(got.inputs["input_ids"], reference(folder, TEXTS, 3, 7))
    d = got.describe()
    assert (d["format"], d["field"], d["sha256"], d["tokens"], d["sequences"]) == ("jsonl", "text", sha(path), 21, 3)


def test_a_jsonl_field_is_read_when_named_and_refused_when_not(folder, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "title": "x"}) for t in TEXTS) + "\n")
    with pytest.raises(SlicerError, match=r"line 1: no 'text' field \(fields: body, title\); name the field with "
                                          r"--calibration-field"):
        load(path, folder, samples=3, seq_len=7)
    got = load(Source(path, "body"), folder, samples=3, seq_len=7)
    assert torch.equal(got.inputs["input_ids"], reference(folder, TEXTS, 3, 7))
    assert got.describe()["field"] == "body"
    with pytest.raises(SlicerError, match="no 'missing' field"):
        load(Source(path, "missing"), folder, samples=3, seq_len=7)


def test_jsonl_chat_messages_are_their_contents_joined(folder, tmp_path):
    path = tmp_path / "chat.jsonl"
    chats = [[{"role": "user", "content": TEXTS[0]}, {"role": "assistant", "content": TEXTS[1]}],
             [{"role": "user", "content": TEXTS[2]}]]
    path.write_text("\n".join(json.dumps({"messages": m}) for m in chats) + "\n")
    got = load(Source(path, "messages"), folder, samples=2, seq_len=6)
    want = reference(folder, [TEXTS[0] + "\n" + TEXTS[1], TEXTS[2]], 2, 6)
    assert torch.equal(got.inputs["input_ids"], want)


def test_token_id_jsonl_needs_no_tokenizer(tmp_path):
    """input_ids records (or bare lists) are taken as they are: a teacher folder without a tokenizer."""
    path = tmp_path / "ids.jsonl"
    rows = [[5, 6, 7, 8, 9], [1, 2, 3], [40, 41, 42, 43]]
    path.write_text(json.dumps({"input_ids": rows[0]}) + "\n" + json.dumps({"input_ids": rows[1]}) + "\n"
                    + json.dumps(rows[2]) + "\n")
    got = load(path, tmp_path, samples=2, seq_len=6)
    assert torch.equal(got.inputs["input_ids"], torch.tensor([[5, 6, 7, 8, 9, 1], [2, 3, 40, 41, 42, 43]]))
    assert got.describe()["field"] == "input_ids"


def test_the_safetensors_input_ids_recipe_still_works(tmp_path):
    from safetensors.torch import save_file

    ids = torch.arange(60).view(5, 12)
    path = tmp_path / "ids.safetensors"
    save_file({"input_ids": ids}, str(path))
    got = load(path, tmp_path, samples=3, seq_len=8)
    assert torch.equal(got.inputs["input_ids"], ids[:3, :8])
    assert got.describe()["format"] == "safetensors" and got.describe()["sha256"] == sha(path)


@pytest.fixture
def pq():
    return pytest.importorskip("pyarrow.parquet")


def write_parquet(pq, path, columns: dict, row_group_size=2):
    import pyarrow as pa

    pq.write_table(pa.table(columns), str(path), row_group_size=row_group_size)
    return path


def test_a_parquet_text_column_gives_the_same_batch(folder, tmp_path, pq):
    path = write_parquet(pq, tmp_path / "c.parquet", {"text": TEXTS, "n": list(range(len(TEXTS)))})
    got = load(path, folder, samples=3, seq_len=7)
    assert torch.equal(got.inputs["input_ids"], reference(folder, TEXTS, 3, 7))
    d = got.describe()
    assert (d["format"], d["field"], d["sha256"], d["tokens"], d["sequences"]) == ("parquet", "text", sha(path), 21, 3)


def test_a_parquet_dataset_folder_is_read_in_name_order_and_named_by_its_files(folder, tmp_path, pq):
    data = tmp_path / "dataset" / "data"
    data.mkdir(parents=True)
    write_parquet(pq, data / "train-00001-of-00002.parquet", {"body": TEXTS[3:]})
    write_parquet(pq, data / "train-00000-of-00002.parquet", {"body": TEXTS[:3]})
    with pytest.raises(SlicerError, match=r"no column 'text' \(columns: body\); name one with --calibration-field"):
        load(tmp_path / "dataset", folder, samples=3, seq_len=7)
    got = load(Source(tmp_path / "dataset", "body"), folder, samples=4, seq_len=7)
    assert torch.equal(got.inputs["input_ids"], reference(folder, TEXTS, 4, 7))
    digest = hashlib.sha256()
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet"):
        digest.update(f"data/{name}".encode() + b"\0" + hashlib.sha256((data / name).read_bytes()).digest())
    assert got.describe()["sha256"] == digest.hexdigest()


def test_a_parquet_token_id_column_needs_no_tokenizer(tmp_path, pq):
    path = write_parquet(pq, tmp_path / "ids.parquet", {"input_ids": [[1, 2, 3, 4], [5, 6], [7, 8, 9]]})
    got = load(path, tmp_path, samples=2, seq_len=4)
    assert torch.equal(got.inputs["input_ids"], torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))


def test_parquet_without_pyarrow_is_one_line_naming_the_extra(folder, tmp_path, monkeypatch):
    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SlicerError, match=r"reading parquet needs pyarrow: pip install 'weight-slicer\[parquet\]'"):
        load(path, folder, samples=2, seq_len=4)


def test_a_file_that_is_not_parquet_is_refused(folder, tmp_path, pq):
    path = tmp_path / "c.parquet"
    path.write_text("the sea")
    with pytest.raises(SlicerError, match="not a parquet file"):
        load(path, folder, samples=2, seq_len=4)


def test_a_field_for_a_plain_text_file_is_refused(folder, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("the sea")
    with pytest.raises(SlicerError, match="--calibration-field names a field of JSONL records or a parquet column"):
        load(Source(path, "body"), folder, samples=2, seq_len=4)


def test_a_batch_short_of_samples_x_seq_len_says_so(folder, tmp_path, caplog):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TEXTS))
    with caplog.at_level(logging.WARNING, logger="slicer"):
        got = load(path, folder, samples=32, seq_len=8)
    n = sum(len(t.split()) for t in TEXTS)  # one token a word for this tokenizer
    assert got.inputs["input_ids"].shape == (n // 8, 8)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert f"holds {n} tokens, fewer than --samples 32 x --seq-len 8 = 256: using {n // 8} rows of 8" in lines[0]


def test_the_default_text_fills_the_default_batch(folder, caplog):
    """32 x 128 tokens (the defaults) with room to spare, even for a word-level tokenizer."""
    with caplog.at_level(logging.WARNING, logger="slicer"):
        got = load(None, folder, samples=32, seq_len=128)
    assert got.inputs["input_ids"].shape == (32, 128) and not caplog.records
    assert got.describe()["source"] == "default" and got.describe()["tokens"] == 4096


@pytest.mark.parametrize("tokens, dim, needle", [(2303, 576, "2,303 calibration tokens for a 576 x 576 covariance, "
                                                                 "2,304 needed (4 per dimension)"),
                                                  (500, 576, "below 576 it is singular")])
def test_an_underdetermined_covariance_is_one_warning_line(tokens, dim, needle, caplog):
    assert calib.TOKENS_PER_DIMENSION == 4
    with caplog.at_level(logging.WARNING, logger="slicer"):
        assert warn_underdetermined(tokens, dim, "--hidden rotate")
    [record] = caplog.records
    assert needle in record.getMessage() and "\n" not in record.getMessage()
    assert underdetermined(4 * dim, dim, "x") is None and not warn_underdetermined(4 * dim, dim, "x")


def test_calibration_field_without_calibration_is_refused(tmp_path, capsys):
    rc = main(["score", str(tmp_path), "--calibration-field", "body", "-o", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pass --calibration FILE too" in err[0], err


def test_score_and_shrink_record_a_jsonl_field_end_to_end(tmp_path, capsys):
    """The CLI's --calibration-field reaches the loader; the scores file and the student's manifest
    record what was used."""
    pytest.importorskip("accelerate")
    import slicer
    from families import FAMILIES, LLAMA_EDITS, build

    teacher = build(tmp_path / "llama", FAMILIES["llama"], coded=False)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(teacher)
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS * 3) + "\n")
    out = tmp_path / "s.safetensors"
    assert main(["score", str(teacher), "--calibration", str(data), "--calibration-field", "body", "--samples", "4",
                 "--seq-len", "8", "-o", str(out), "--quiet"]) == 0
    meta = slicer.importance.load(out).metadata["calibration"]
    want = {"source": str(data), "format": "jsonl", "field": "body", "sha256": sha(data),
            "shape": {"input_ids": [4, 8]}, "tokens": 32, "sequences": 4}
    assert meta == want
    student = tmp_path / "student"
    argv = ["shrink", str(teacher), str(student), "--method", "importance", "--calibration", str(data),
            "--calibration-field", "body", "--samples", "4", "--seq-len", "8", "--quiet"]
    assert main(argv + [f"--set={k}={v}" for k, v in LLAMA_EDITS.items()]) == 0
    manifest = json.loads((student / "slicer_manifest.json").read_text())
    assert manifest["scores"]["calibration"] == want
