"""Class-name lists, description loading (datasets/texts.py) and the description checker."""
import json
import os.path as osp

import pytest

from fairclip.datasets import texts
from fairclip.toolbox.errors import UserError
from fairclip.tools import check_descriptions as cd

# ImageNet is not here: its class names come from the user's imagenet/classnames.txt (as in CoOp) and we
# ship no descriptions for it (the "if time allows"); any CuPL-format file can be given instead.
BENCHMARKS = [
    "birdsnap", "caltech101", "cub", "dtd", "eurosat", "fgvc_aircraft", "food101",
    "oxford_flowers", "oxford_pets", "resisc45", "stanford_cars", "sun397", "ucf101",
]
SHIPPED = sorted(set(BENCHMARKS) | set(texts.available_classname_keys()))


# ---------------------------------------------------------------- shipped files

@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_descriptions_pass_the_check(key):
    assert osp.isfile(texts.classnames_path(key)), "no class-name list for " + key
    assert osp.isfile(texts.default_descriptions_path(key)), "no description file for " + key
    problems = cd.check_dataset(key)
    assert problems == [], "{} problems, first: {}".format(len(problems), problems[:5])
    # ... and the loader reads them in label order
    loaded = texts.load_descriptions(texts.default_descriptions_path(key), texts.read_classnames(key))
    assert len(loaded) == len(texts.read_classnames(key))


# ---------------------------------------------------------------- helpers

CLASSES = ["ant", "crocodile", "crocodile_head", "sea_horse"]


def good_data(classes=CLASSES, n=10):
    data = {}
    for c in classes:
        name = texts.display_name(c)
        article = "an" if name[0] in "aeiou" else "a"
        data[c] = ["A photo of {} {}, seen from angle number {} of many.".format(article, name, i) for i in range(n)]
    return data


def write_json(tmp_path, obj, name="desc.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- texts.py

def test_display_and_normalised_names():
    assert texts.display_name("sea_horse") == "sea horse"
    assert texts.normalize_name("  Sea-Horse ") == texts.normalize_name("sea_horse") == "sea horse"


def test_read_classnames_missing_key_names_the_file():
    with pytest.raises(UserError, match=r"no_such_dataset\.txt"):
        texts.read_classnames("no_such_dataset")


@pytest.mark.parametrize("content, match", [
    ("a\n\nb\n", "line 2: empty"),
    ("a\nb\na\n", "appears twice"),
    ("a\n b\n", "leading/trailing spaces"),
    ("", "empty"),
])
def test_read_classnames_file_rejects_bad_lists(tmp_path, content, match):
    path = tmp_path / "c.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        texts.read_classnames_file(str(path))


def test_read_classnames_file_keeps_order_and_unicode(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("zebra\ncrème brûlée\napple\n", encoding="utf-8")
    assert texts.read_classnames_file(str(path)) == ["zebra", "crème brûlée", "apple"]


def test_load_exact_keys_in_label_order_ignoring_extras(tmp_path):
    data = good_data()
    data["not_a_class"] = ["A photo of something else."]
    path = write_json(tmp_path, dict(reversed(list(data.items()))))
    loaded = texts.load_descriptions(path, CLASSES)
    assert loaded == [data[c] for c in CLASSES]


def test_load_matches_normalised_spelling(tmp_path):
    # CuPL-style keys: spaces instead of underscores, capitals, hyphens
    path = write_json(tmp_path, {"Sea-Horse": ["a sea horse"], "ANT": ["an ant", "  "], "crocodile": ["c"],
                                 "Crocodile Head": ["h"]})
    loaded = texts.load_descriptions(path, CLASSES)
    assert loaded == [["an ant"], ["c"], ["h"], ["a sea horse"]]  # blank sentence dropped


def test_load_prefers_exact_key_over_normalised(tmp_path):
    path = write_json(tmp_path, {"Ant": ["wrong"], "ant": ["right"]})
    assert texts.load_descriptions(path, ["ant"]) == [["right"]]


def test_load_ambiguous_normalised_keys(tmp_path):
    path = write_json(tmp_path, {"Sea Horse": ["x"], "sea-horse": ["y"]})
    with pytest.raises(UserError, match="matches several keys"):
        texts.load_descriptions(path, ["sea_horse"])


def test_load_missing_file_names_the_config_key(tmp_path):
    path = str(tmp_path / "absent.json")
    with pytest.raises(UserError) as info:
        texts.load_descriptions(path, CLASSES)
    assert "absent.json" in str(info.value) and "DATASET.DESCRIPTIONS" in str(info.value)


def test_load_invalid_json_gives_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "ant": ["x"],\n  "crocodile": ["y"\n}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.json is not valid JSON \(line 4, column 1"):
        texts.load_descriptions(str(path), CLASSES)


@pytest.mark.parametrize("obj, match", [
    (["ant"], "must hold a JSON object"),
    ({"ant": "one sentence"}, "'ant' must map to a list of strings"),
    ({"ant": ["ok", 3]}, "list containing a int"),
])
def test_load_rejects_wrong_shapes(tmp_path, obj, match):
    with pytest.raises(UserError, match=match):
        texts.load_descriptions(write_json(tmp_path, obj), ["ant"])


def test_load_missing_classes_lists_first_ten_and_count(tmp_path):
    classes = ["class_{:02d}".format(i) for i in range(15)]
    path = write_json(tmp_path, {"class_00": ["x"], "class_01": ["y"], "class_02": ["z"]})
    with pytest.raises(UserError) as info:
        texts.load_descriptions(path, classes)
    msg = str(info.value)
    assert "lacks 12 of 15 classes" in msg and "first 10" in msg
    assert "class_12" in msg and "class_13" not in msg and "class_00" not in msg
    assert "\n" not in msg


def test_load_empty_list_is_an_error(tmp_path):
    path = write_json(tmp_path, {"ant": [], "crocodile": ["x"]})
    with pytest.raises(UserError, match="'ant' has no sentences"):
        texts.load_descriptions(path, ["ant", "crocodile"])


# ---------------------------------------------------------------- the checker

def test_checker_accepts_a_good_file(tmp_path):
    assert cd.check_file(write_json(tmp_path, good_data()), CLASSES) == []


def test_checker_allows_own_name_parts_and_ignores_partial_words(tmp_path):
    data = good_data()
    # "crocodile" is part of "crocodile head": allowed; "ant" inside "giant" is not a mention of ant
    data["crocodile_head"][0] = "A close-up photo of a crocodile head, the crocodile's snout and eyes."
    data["crocodile"][0] = "A photo of a giant crocodile, basking on a river bank."
    assert cd.check_file(write_json(tmp_path, data), CLASSES) == []


def one_problem(tmp_path, data, classes=CLASSES):
    problems = cd.check_file(write_json(tmp_path, data), classes)
    assert len(problems) == 1, problems
    return problems[0]


def test_checker_catches_missing_class(tmp_path):
    data = good_data()
    del data["sea_horse"]
    assert "1 classes missing" in one_problem(tmp_path, data) and "sea_horse" in one_problem(tmp_path, data)


def test_checker_catches_extra_key(tmp_path):
    data = good_data()
    data["dragon"] = ["A photo of a dragon, with wings."] * 1
    assert "not classes" in one_problem(tmp_path, data)


def test_checker_catches_wrong_key_order(tmp_path):
    data = dict(reversed(list(good_data().items())))
    assert "label order" in one_problem(tmp_path, data)


def test_checker_catches_too_few_sentences(tmp_path):
    data = good_data()
    data["ant"] = data["ant"][:9]
    assert "9 sentences, need at least 10" in one_problem(tmp_path, data)


def test_checker_catches_empty_sentence(tmp_path):
    data = good_data()
    data["ant"].append("   ")
    assert "empty sentence" in one_problem(tmp_path, data)


def test_checker_catches_duplicate_within_class(tmp_path):
    data = good_data()
    data["ant"].append(data["ant"][3].upper())
    assert "duplicate of sentence 3" in one_problem(tmp_path, data)


def test_checker_catches_duplicate_across_classes(tmp_path):
    data = good_data()
    shared = "A photo of an ant, next to a crocodile."
    data["ant"].append(shared)
    data["crocodile"].append(shared)
    problems = cd.check_file(write_json(tmp_path, data), CLASSES)
    # (the copy also breaks the subject rule for crocodile; the duplicate is reported on its own)
    assert any("crocodile' sentence 10: duplicate of class 'ant' sentence 10" in p for p in problems), problems


def test_checker_catches_too_long_sentence(tmp_path):
    data = good_data()
    data["ant"].append("A photo of an ant, " + " ".join(["very"] * 80) + " small.")
    assert "over CLIP's 77-token context" in one_problem(tmp_path, data)


def test_token_count_matches_clip_tokenize():
    import clip

    s = "A photo of a sea horse, which has a curled tail and a long snout."
    assert cd.token_count(s) == int((clip.tokenize(s)[0] != 0).sum())


def test_checker_catches_subject_without_own_name(tmp_path):
    data = good_data()
    data["ant"].append("A photo of a small insect, which is an ant.")
    assert "does not contain the class name 'ant'" in one_problem(tmp_path, data)


def test_checker_catches_other_class_in_subject(tmp_path):
    data = good_data()
    data["ant"].append("A photo of an ant on a sea horse, in water.")
    assert "names other class(es): 'sea horse'" in one_problem(tmp_path, data)


def test_checker_reports_bad_files(tmp_path):
    assert "does not exist" in cd.check_file(str(tmp_path / "none.json"), CLASSES)[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    assert "invalid JSON" in cd.check_file(str(bad), CLASSES)[0]
    assert "list of strings" in one_problem(tmp_path, dict(good_data(), ant="not a list"))


def test_cli_exit_codes(tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    good = write_json(tmp_path, good_data(), "good.json")
    assert cd.main(["--file", good, "--classnames", str(classes)]) == 0
    bad_data = good_data()
    bad_data["ant"] = bad_data["ant"][:3]
    bad = write_json(tmp_path, bad_data, "bad.json")
    assert cd.main(["--file", bad, "--classnames", str(classes)]) == 1
    out = capsys.readouterr().out
    assert "3 sentences, need at least 10" in out and "problems" in out
    assert cd.main(["--file", good]) == 2
    assert "ERROR: --file needs the class list" in capsys.readouterr().err
