"""Check per-class description files against the rules for the descriptions we ship.

    python -m tools.check_descriptions                         # every dataset with a class-name list
    python -m tools.check_descriptions --dataset caltech101 dtd
    python -m tools.check_descriptions --file my.json --classnames my_classes.txt
    python -m tools.check_descriptions --file my.json --dataset dtd

Rules: keys == the class list (label order, no extras); at least MIN_SENTENCES sentences per class; no
empty or duplicate sentences (within a class or across the dataset); each sentence fits CLIP's 77-token
context; the subject rule: the text before the first comma (commas inside the class's own name do not
count) names this class (case-insensitive) and no other class, unless that other name is part of this
class's own name ("crocodile" in "crocodile head").
Other names count only as whole words, so "ant" is not found in "giant".

Prints a table per dataset and the first problems in full; exit status 1 if any problem, 2 on bad input.
"""
import argparse
import json
import os.path as osp
import re
import sys

from fairclip.datasets import texts
from fairclip.toolbox.errors import UserError, report_error

CONTEXT_LENGTH = 77  # CLIP's text context, start and end tokens included
MIN_SENTENCES = 10
SHOW_PROBLEMS = 20  # problems printed in full per dataset

_tokenizer = None


def token_count(sentence):
    """Tokens CLIP's text encoder sees for ``sentence``, start/end tokens included."""
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = _load_simple_tokenizer()()
    return len(_tokenizer.encode(sentence)) + 2


def _load_simple_tokenizer():
    """``clip.simple_tokenizer.SimpleTokenizer``, loaded without importing ``clip`` itself (and torch)."""
    import importlib.util

    if "clip.simple_tokenizer" in sys.modules:
        return sys.modules["clip.simple_tokenizer"].SimpleTokenizer
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'clip' package is not installed; pip install -r requirements.txt (openai-clip)")
    path = osp.join(list(spec.submodule_search_locations)[0], "simple_tokenizer.py")
    mod_spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.SimpleTokenizer


def _whole_word_in(name, text):
    """``name`` occurs in ``text`` (both lower-case) not glued to other letters or digits."""
    if name not in text:  # cheap pre-filter
        return False
    return re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", text) is not None


def subject_of(sentence, own):
    """The lower-cased text of ``sentence`` before its first comma that is not part of ``own`` (the
    lower-cased display name of the sentence's class)."""
    text = sentence.lower()
    if "," in own:
        text = text.replace(own, own.replace(",", "\0"))
    return text.split(",", 1)[0].replace("\0", ",")


class SubjectRule:
    """The subject rule for one class list (display names computed once)."""

    def __init__(self, classnames):
        self.names = {c: texts.display_name(c).lower() for c in classnames}

    def problem(self, sentence, classname):
        """None when the text before the first comma names ``classname`` and no other class, else why not.
        Commas inside the class's own name ("pepper, bell") do not end the subject."""
        own = self.names[classname]
        subject = subject_of(sentence, own)
        if own not in subject:
            return "the text before the first comma does not contain the class name {!r}".format(own)
        others = [n for c, n in self.names.items() if c != classname and n not in own and _whole_word_in(n, subject)]
        if others:
            return "the text before the first comma names other class(es): {}".format(", ".join(repr(n) for n in others))
        return None


def sentence_problems(sentence, classname, rule):
    """Problems of one sentence on its own (empty, too long, subject rule)."""
    if not sentence.strip():
        return ["empty sentence"]
    found = []
    n = token_count(sentence)
    if n > CONTEXT_LENGTH:
        found.append("{} tokens, over CLIP's {}-token context".format(n, CONTEXT_LENGTH))
    why = rule.problem(sentence, classname)
    if why:
        found.append(why)
    return found


def dedup_key(sentence):
    """Form under which two sentences count as duplicates (case, spacing and a final full stop ignored)."""
    return " ".join(sentence.lower().split()).rstrip(".")


def check_data(data, classnames, min_sentences=MIN_SENTENCES):
    """Check a parsed description object; returns (problems, stats)."""
    problems = []
    if not isinstance(data, dict):
        return ["not a JSON object {classname: [sentences]}"], _stats(classnames, {})
    wanted = set(classnames)
    missing = [c for c in classnames if c not in data]
    extra = [k for k in data if k not in wanted]
    if missing:
        problems.append("{} classes missing (first {}: {})".format(len(missing), min(10, len(missing)), ", ".join(missing[:10])))
    if extra:
        problems.append("{} keys that are not classes (first {}: {})".format(len(extra), min(10, len(extra)), ", ".join(extra[:10])))
    present = [c for c in data if c in wanted]
    if not missing and present != list(classnames):
        problems.append("keys are not in label order (the order of the class-name list)")

    rule = SubjectRule(classnames)
    seen = {}  # dedup key -> (class, index)
    counts = {}
    for cname in classnames:
        sentences = data.get(cname)
        if sentences is None:
            continue
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            problems.append("class {!r}: value must be a list of strings".format(cname))
            continue
        counts[cname] = len(sentences)
        if len(sentences) < min_sentences:
            problems.append("class {!r}: {} sentences, need at least {}".format(cname, len(sentences), min_sentences))
        for i, s in enumerate(sentences):
            for why in sentence_problems(s, cname, rule):
                problems.append("class {!r} sentence {}: {}: {!r}".format(cname, i, why, s))
            if not s.strip():
                continue
            key = dedup_key(s)
            if key in seen:
                other, j = seen[key]
                where = "sentence {}".format(j) if other == cname else "class {!r} sentence {}".format(other, j)
                problems.append("class {!r} sentence {}: duplicate of {}: {!r}".format(cname, i, where, s))
            else:
                seen[key] = (cname, i)
    return problems, _stats(classnames, counts)


def _stats(classnames, counts):
    per_class = list(counts.values())
    return {
        "classes": len(classnames),
        "sentences": sum(per_class),
        "min": min(per_class) if per_class else 0,
        "mean": sum(per_class) / len(per_class) if per_class else 0.0,
    }


def check_file_report(path, classnames):
    """(problems, stats) for the description file at ``path``; a missing or unparsable file is a problem."""
    if not osp.isfile(path):
        return ["description file {} does not exist".format(path)], _stats(classnames, {})
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        return ["{}: invalid JSON (line {}, column {}: {})".format(path, exc.lineno, exc.colno, exc.msg)], _stats(classnames, {})
    except UnicodeDecodeError as exc:
        return ["{}: not UTF-8 ({})".format(path, exc)], _stats(classnames, {})
    return check_data(data, classnames)


def check_file(path, classnames):
    """Problems (strings) of the description file ``path`` for the class list ``classnames``."""
    return check_file_report(path, classnames)[0]


def check_dataset(key):
    """Problems of the shipped description file of dataset ``key``."""
    return check_file(texts.default_descriptions_path(key), texts.read_classnames(key))


def _print_report(rows, details):
    from tabulate import tabulate

    headers = ["dataset", "classes", "sentences", "min/class", "mean/class", "problems"]
    print(tabulate(rows, headers=headers, floatfmt=".1f"))
    for label, problems in details:
        if not problems:
            continue
        print("\n{}: {} problem(s){}".format(label, len(problems), ", first {}:".format(SHOW_PROBLEMS) if len(problems) > SHOW_PROBLEMS else ":"))
        for p in problems[:SHOW_PROBLEMS]:
            print("  - " + p)


def _jobs(args):
    """(label, description path, class names) for each thing to check."""
    if args.file:
        if args.classnames:
            if args.dataset:
                raise UserError("give either --classnames or --dataset with --file, not both")
            return [(args.file, args.file, texts.read_classnames_file(args.classnames))]
        if not args.dataset or len(args.dataset) != 1:
            raise UserError("--file needs the class list: add --classnames TXT or one --dataset KEY")
        return [(args.file, args.file, texts.read_classnames(args.dataset[0]))]
    if args.classnames:
        raise UserError("--classnames is only used with --file")
    keys = args.dataset or texts.available_classname_keys()
    if not keys:
        raise UserError("no class-name lists in {}; nothing to check".format(texts.CLASSNAMES_DIR))
    return [(k, texts.default_descriptions_path(k), texts.read_classnames(k)) for k in keys]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check per-class description files ({classname: [sentences]}).")
    parser.add_argument("--dataset", nargs="+", metavar="KEY", help="dataset keys (default: all with a class list)")
    parser.add_argument("--file", help="a description JSON file to check instead of the shipped one")
    parser.add_argument("--classnames", help="class-name list (one per line) for --file")
    args = parser.parse_args(argv)
    try:
        jobs = _jobs(args)
    except UserError as exc:
        return report_error(exc)
    rows, details = [], []
    for label, path, classnames in jobs:
        problems, st = check_file_report(path, classnames)
        rows.append([label, st["classes"], st["sentences"], st["min"], st["mean"], len(problems)])
        details.append((label, problems))
    _print_report(rows, details)
    return 1 if any(p for _, p in details) else 0


if __name__ == "__main__":
    sys.exit(main())
