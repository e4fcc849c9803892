"""read_prompts: the three formats, and an error naming the file for each way a prompt file can be bad."""
import json

import pytest

from fastdistill.data.prompts import read_prompts


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _jsonl(tmp_path, *records):
    return _write(tmp_path, "p.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def test_text_lines_stripped_blank_skipped_hash_kept(tmp_path):
    path = _write(tmp_path, "p.txt", "  a photo of a cat \r\n\n\t\n# not a comment\nthe dog\n")
    assert read_prompts(path) == ["a photo of a cat", "# not a comment", "the dog"]
    assert read_prompts(str(path)) == read_prompts(path)


def test_other_suffixes_are_text(tmp_path):
    assert read_prompts(_write(tmp_path, "prompts", "one\ntwo")) == ["one", "two"]


def test_csv_picks_prompt_column_case_insensitively(tmp_path):
    path = _write(tmp_path, "p.csv", 'id, Caption, text\n1, "a cat, sitting", x\n\n2, "two\nlines ",y\n')
    assert read_prompts(path) == ["a cat, sitting", "two\nlines"]  # caption before text; spaces after commas skipped


def test_csv_prefers_prompt_and_handles_bom(tmp_path):
    path = _write(tmp_path, "p.CSV", "\ufeffPROMPT,caption\nfirst,other\n")
    assert read_prompts(path) == ["first"]


def test_csv_without_prompt_column_names_the_columns(tmp_path):
    path = _write(tmp_path, "p.csv", "id,label\n1,cat\n")
    with pytest.raises(ValueError, match=r"p\.csv.*no prompt column.*\['id', 'label'\]"):
        read_prompts(path)


def test_csv_short_row_and_malformed(tmp_path):
    with pytest.raises(ValueError, match=r"p\.csv:3: row has 1 fields"):
        read_prompts(_write(tmp_path, "p.csv", "id,prompt\n1,cat\n2\n"))
    with pytest.raises(ValueError, match=r"p\.csv: malformed CSV"):
        read_prompts(_write(tmp_path, "p.csv", "prompt\n" + "x" * 200_000 + "\n"))  # over csv's field limit


def test_csv_header_only_has_no_prompts(tmp_path):
    with pytest.raises(ValueError, match=r"p\.csv: no prompts"):
        read_prompts(_write(tmp_path, "p.csv", "prompt\n"))


def test_jsonl_fields_in_order_of_preference(tmp_path):
    path = _jsonl(tmp_path, {"prompt": " a cat ", "text": "no"}, {"caption": "a dog"}, {"text": "a digit", "id": 3})
    assert read_prompts(path) == ["a cat", "a dog", "a digit"]


def test_jsonl_blank_lines_skipped(tmp_path):
    assert read_prompts(_write(tmp_path, "p.jsonl", '\n{"prompt": "x"}\n\n  \n')) == ["x"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ok"}', "{not json"], r"p\.jsonl:2: not valid JSON"),
        (['{"prompt": "ok"}', "", '{"label": 3}'], r"p\.jsonl:3: no prompt / caption / text field \(keys: \['label'\]\)"),
        (['["a cat"]'], r"p\.jsonl:1: expected a JSON object, got list"),
        (['{"prompt": 7}'], r"p\.jsonl:1: 'prompt' is int, expected a string"),
        (['{"caption": null}'], r"p\.jsonl:1: 'caption' is NoneType"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_prompts(_write(tmp_path, "p.jsonl", "\n".join(lines) + "\n"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: no such prompt file"):
        read_prompts(tmp_path / "nope.txt")


def test_directory(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory"):
        read_prompts(tmp_path)


@pytest.mark.parametrize("name, content", [("p.txt", ""), ("p.txt", " \n\n\t\n"), ("p.jsonl", "\n"), ("p.csv", "")])
def test_empty_or_blank(tmp_path, name, content):
    with pytest.raises(ValueError, match=rf"{name}: no prompts found"):
        read_prompts(_write(tmp_path, name, content))


def test_jsonl_blank_prompt_is_skipped_then_empty(tmp_path):
    with pytest.raises(ValueError, match="no prompts found"):
        read_prompts(_jsonl(tmp_path, {"prompt": "  "}))


def test_not_utf8(tmp_path):
    path = _write(tmp_path, "p.txt", "caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"p\.txt: not UTF-8 text \(invalid byte at offset 3\)"):
        read_prompts(path)


def test_plain_json_points_to_jsonl(tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl"):
        read_prompts(_write(tmp_path, "p.json", '["a cat"]'))
