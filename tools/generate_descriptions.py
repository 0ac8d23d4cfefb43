"""Generate per-class visual descriptions with any OpenAI-compatible chat endpoint.

    python -m tools.generate_descriptions --dataset dtd --out my_dtd.json [--per-class 10]
        [--model M] [--endpoint URL] [--temperature T] [--config FILE]

Settings, strongest first: command-line flags, the ``--config`` file (YAML or JSON with keys
``endpoint``, ``model``, ``api_key``, ``temperature``, ``per_class``, ``timeout``, ``retries``,
``max_reply_bytes``), then the environment: ``OPENAI_BASE_URL``, ``DESCRIPTIONS_MODEL``,
``OPENAI_API_KEY``. The endpoint is the API base (``https://host/v1``); ``/chat/completions`` is appended
unless already there.

The API key is sent to the endpoint's host only: redirects are refused (one line naming both hosts),
and it never appears in a message. Each request, reply included, ends within ``--timeout`` seconds
(a server that stalls or trickles is cut off) and a reply over ``--max-reply-bytes`` is refused.

Each reply is split into sentences and only those that pass the rules of
``tools.check_descriptions`` (subject names this class and no other, fits 77 tokens, not a duplicate)
are kept; if too few survive, the class is asked again (up to ``--max-requests`` times). The output
JSON is rewritten atomically after every class, and classes already in it are skipped, so an
interrupted run resumes where it stopped. HTTP uses only the standard library.
"""
import argparse
import collections
import difflib
import functools
import http.client
import json
import math
import os
import os.path as osp
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from fairclip.datasets import texts
from fairclip.toolbox.errors import UserError, report_error
from fairclip.toolbox.io import atomic_write_text
from fairclip.tools import check_descriptions as check

# dataset key -> (what the images show, sentence opener with {a} = article and {name} = display name)
DOMAINS = {
    "birdsnap": ("Birdsnap: photos of North American bird species", "A photo of {a} {name}, a type of bird"),
    "caltech101": ("Caltech-101: photos of single objects, animals and vehicles, mostly centred", "A photo of {a} {name}"),
    "cub": ("CUB-200-2011: photos of North American bird species", "A photo of {a} {name}, a type of bird"),
    "dtd": ("DTD: close-up photos of surface textures", "A close-up photo of {a} {name} texture"),
    "eurosat": ("EuroSAT: low-resolution Sentinel-2 satellite images of land use", "A satellite photo of {name}"),
    "fgvc_aircraft": ("FGVC-Aircraft: photos of aircraft by model variant", "A photo of {a} {name}, a type of aircraft"),
    "food101": ("Food-101: photos of dishes", "A photo of {name}, a type of food"),
    "imagenet": ("ImageNet: photos of everyday objects and animals", "A photo of {a} {name}"),
    "oxford_flowers": ("Oxford Flowers-102: photos of flower species", "A photo of {a} {name}, a type of flower"),
    "oxford_pets": ("Oxford-IIIT Pets: photos of cat and dog breeds", "A photo of {a} {name}, a type of pet"),
    "resisc45": ("NWPU-RESISC45: aerial remote-sensing scenes seen from straight above", "A satellite photo of {a} {name}"),
    "stanford_cars": ("Stanford Cars: photos of cars by make, model and year", "A photo of {a} {name}, a type of car"),
    "synthetic": ("a synthetic world: coloured shapes with a small marking, on noisy backgrounds", "A photo of {a} {name}"),
    "sun397": ("SUN397: photos of indoor and outdoor scenes", "A photo of {a} {name}"),
    "ucf101": ("UCF101: frames from YouTube videos of people doing actions", "A video frame of the action {name}"),
}
DEFAULT_DOMAIN = ("photos of the classes listed", "A photo of {a} {name}")
NEIGHBOURS = 6  # confusable classes named in the prompt
LIST_ALL_UP_TO = 120  # datasets this small get their whole class list in the prompt
RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_REPLY_BYTES = 4 << 20  # a chat completion is a few kB; anything near this is not one

SYSTEM_PROMPT = (
    "You write short visual descriptions of image categories for a zero-shot image classifier. "
    "Reply with the sentences only, one per line, with no numbering and no extra text."
)


# ---------------------------------------------------------------- settings

def _load_config_file(path):
    if not osp.isfile(path):
        raise UserError("--config {} does not exist".format(path))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        raise UserError("--config {} cannot be parsed ({}); fix the file".format(path, str(exc).splitlines()[0])) from None
    if not isinstance(data, dict):
        raise UserError("--config {} must hold a mapping of settings".format(path))
    allowed = {"endpoint", "model", "api_key", "temperature", "per_class", "timeout", "retries", "max_reply_bytes"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError("--config {}: unknown key(s) {}; allowed: {}".format(path, ", ".join(unknown), ", ".join(sorted(allowed))))
    return data


def resolve_settings(args, environ=os.environ):
    """Merge flags, config file and environment into one dict; one-line errors for what is missing."""
    conf = _load_config_file(args.config) if args.config else {}

    def pick(flag, key, env=None, default=None):
        if flag is not None:
            return flag
        if conf.get(key) is not None:
            return conf[key]
        if env and environ.get(env):
            return environ[env]
        return default

    def number(kind, flag, key, default):
        value = pick(flag, key, default=default)
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)):
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            raise UserError("setting {} = {!r} is not {} number; fix --{} or the --config file".format(
                key, value, "a whole" if kind is int else "a", key.replace("_", "-"))) from None

    s = {
        "endpoint": pick(args.endpoint, "endpoint", "OPENAI_BASE_URL"),
        "model": pick(args.model, "model", "DESCRIPTIONS_MODEL"),
        "api_key": pick(None, "api_key", "OPENAI_API_KEY", ""),
        "temperature": number(float, args.temperature, "temperature", 0.7),
        "per_class": number(int, args.per_class, "per_class", check.MIN_SENTENCES),
        "timeout": number(float, args.timeout, "timeout", 120.0),
        "retries": number(int, args.retries, "retries", 5),
        "max_reply_bytes": number(int, getattr(args, "max_reply_bytes", None), "max_reply_bytes", MAX_REPLY_BYTES),
    }
    if not s["endpoint"]:
        raise UserError("no endpoint configured: pass --endpoint URL, set OPENAI_BASE_URL or put 'endpoint' in --config")
    if not s["model"]:
        raise UserError("no model configured: pass --model NAME, set DESCRIPTIONS_MODEL or put 'model' in --config")
    if s["per_class"] < 1:
        raise UserError("--per-class must be at least 1 (got {})".format(s["per_class"]))
    if not (s["timeout"] > 0 and math.isfinite(s["timeout"])):
        raise UserError("--timeout must be a positive number of seconds (got {})".format(s["timeout"]))
    if s["max_reply_bytes"] < 1:
        raise UserError("--max-reply-bytes must be positive (got {})".format(s["max_reply_bytes"]))
    return s


def chat_url(endpoint):
    url = endpoint.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


# ---------------------------------------------------------------- HTTP

class _Deadline:
    """Closes the sockets of one request when its time is up, so that a server that stalls or trickles
    (headers or body, one byte at a time) cannot keep a read waiting past ``--timeout``: a socket timeout
    alone restarts with every byte received."""

    def __init__(self, seconds):
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)
        return sock

    def expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def cancel(self):
        self._timer.cancel()


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _watched(base):
    """``base`` (an ``http.client`` connection class) whose sockets are registered with a ``_Deadline``."""

    class Watched(base):
        def __init__(self, *args, deadline=None, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection
            self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

    return Watched


_WatchedHTTP = _watched(http.client.HTTPConnection)
_WatchedHTTPS = _watched(http.client.HTTPSConnection)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, client):
        super().__init__()
        self.client = client

    def http_open(self, req):
        return self.do_open(functools.partial(_WatchedHTTP, deadline=self.client.deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, client):
        super().__init__()
        self.client = client

    def https_open(self, req):
        return self.do_open(functools.partial(_WatchedHTTPS, deadline=self.client.deadline), req,
                            context=self._context)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the request carries the API key, and a POST turned into a GET (what a
    301/302/303 becomes) could not be a chat completion anyway."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise UserError("{} redirects (HTTP {}) to another host, {}; the request (and its API key) is not sent "
                            "there: if you trust that host, set --endpoint / OPENAI_BASE_URL to it".format(
                                display_url(req.full_url), code, display_url(newurl)))
        raise UserError("{} redirects (HTTP {}) to {}; set --endpoint / OPENAI_BASE_URL to the final URL".format(
            display_url(req.full_url), code, display_url(newurl)))


def display_url(url):
    """``url`` without any ``user:password@`` part (never printed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = "[{}]".format(host) if ":" in host else host
    if parts.port:
        netloc += ":{}".format(parts.port)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Stalled(Exception):
    """The request's deadline passed."""


class ChatClient:
    """Minimal OpenAI-compatible chat client: retries 429/5xx and connection errors with backoff.

    Each request (connection, headers and body) must finish within ``timeout`` seconds and its reply
    may not exceed ``max_reply_bytes``; redirects are refused (the API key never leaves the endpoint's
    host: it is also an unredirected header) and the key never appears in a message."""

    def __init__(self, endpoint, model, api_key="", temperature=0.7, timeout=120.0, retries=5, backoff=2.0,
                 sleep=time.sleep, max_reply_bytes=None):
        self.url = chat_url(endpoint)
        self.model, self.api_key, self.temperature = model, api_key, temperature
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self.max_reply_bytes = int(max_reply_bytes or MAX_REPLY_BYTES)
        self.deadline = None
        # A local server (vLLM, llama.cpp, ...) is reached directly even when HTTP(S)_PROXY is set.
        host = urllib.parse.urlsplit(self.url).hostname or ""
        local = host in ("localhost", "::1") or host.startswith("127.")
        handlers = [_DeadlineHTTPHandler(self), _DeadlineHTTPSHandler(self), _RefuseRedirects()]
        self._opener = urllib.request.build_opener(*handlers, *([urllib.request.ProxyHandler({})] if local else []))

    def redact(self, text):
        """``text`` with the API key masked (URLs are shown through ``display_url``, which drops passwords)."""
        text = str(text)
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return text

    def complete(self, messages):
        """The text of the first choice of a chat completion."""
        try:
            return self._complete(messages)
        except UserError as exc:
            raise UserError(self.redact(exc)) from None

    def _complete(self, messages):
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode("utf-8")
        url = display_url(self.url)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"},
                                             method="POST")
            if self.api_key:  # never copied onto a redirected request
                request.add_unredirected_header("Authorization", "Bearer " + self.api_key)
            self.deadline = _Deadline(self.timeout)
            try:
                try:
                    with self._opener.open(request, timeout=self.timeout) as resp:
                        raw = self._read_reply(resp)
                    return parse_completion(raw, url)
                except urllib.error.HTTPError as exc:
                    snippet = _snippet(self._read_error_body(exc))
                    if self.deadline.expired:
                        raise _Stalled() from None
                    if exc.code in RETRY_STATUS and not last:
                        self.sleep(self._delay(attempt, exc.headers.get("Retry-After")))
                        continue
                    hint = {401: "; check OPENAI_API_KEY", 403: "; check OPENAI_API_KEY",
                            404: "; check the endpoint URL and the model name"}.get(exc.code, "")
                    tries = " after {} tries".format(attempt + 1) if exc.code in RETRY_STATUS else ""
                    raise UserError("HTTP {} from {}{}: {}{}".format(exc.code, url, tries, snippet, hint)) from None
                except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
                    if self.deadline.expired:
                        raise _Stalled() from None
                    if not last:
                        self.sleep(self._delay(attempt, None))
                        continue
                    if isinstance(exc, http.client.IncompleteRead):
                        raise UserError("incomplete reply from {} after {} tries (the connection closed after {} "
                                        "bytes, {} more were announced); re-run to resume, or check the "
                                        "endpoint".format(url, attempt + 1, len(exc.partial), exc.expected)) from None
                    reason = getattr(exc, "reason", None) or "{}: {}".format(type(exc).__name__, exc)
                    raise UserError("cannot reach {} after {} tries ({}); check --endpoint / OPENAI_BASE_URL".format(
                        url, attempt + 1, reason)) from None
            except (_Stalled, OSError) as exc:  # OSError: a read on a socket the deadline shut down
                if not self.deadline.expired:
                    raise
                raise UserError("no complete reply from {} within --timeout {:g} s (the server stalled or sent "
                                "too slowly); raise --timeout for a slow model, or check the endpoint".format(
                                    url, self.timeout)) from None
            finally:
                self.deadline.cancel()

    def _read_reply(self, resp):
        """The whole body, at most ``max_reply_bytes`` (the Content-Length is checked first)."""
        cap = self.max_reply_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > cap:
            raise UserError("reply from {} announces {} bytes, over --max-reply-bytes {} (a chat completion is a "
                            "few kB); check the endpoint".format(display_url(self.url), int(declared), cap))
        parts, size = [], 0
        while True:
            part = resp.read(min(65536, cap + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > cap:
                raise UserError("reply from {} exceeds --max-reply-bytes {} (a chat completion is a few kB); check "
                                "the endpoint".format(display_url(self.url), cap))
        if self.deadline.expired:
            raise _Stalled()
        if declared and declared.strip().isdigit() and size < int(declared):  # read(n) returns short bodies as is
            raise http.client.IncompleteRead(b"".join(parts), int(declared) - size)
        return b"".join(parts)

    def _read_error_body(self, exc):
        try:
            return exc.read(4096)  # enough for a message; an error body is never read whole
        except (OSError, http.client.HTTPException):
            return b""

    def _delay(self, attempt, retry_after):
        try:
            if retry_after is not None:
                return min(float(retry_after), 60.0)
        except ValueError:
            pass
        return self.backoff * (2 ** attempt)


def _snippet(raw, limit=200):
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "") or "(empty body)"


def parse_completion(raw, url="endpoint"):
    """``choices[0].message.content`` of a chat-completion body, or a one-line error. A reply the model
    cut at its token limit (``finish_reason`` "length") loses its last, possibly unfinished, line."""
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError("malformed reply from {} (no choices[0].message.content): {}".format(url, _snippet(raw))) from None
    if not isinstance(content, str):
        raise UserError("malformed reply from {}: message content is {}, not text".format(url, type(content).__name__))
    if isinstance(choice, dict) and choice.get("finish_reason") == "length":
        content = content.rstrip("\n").rpartition("\n")[0]
    return content


# ---------------------------------------------------------------- prompt and reply

def article(word):
    return "an" if word[:1].lower() in "aeiou" else "a"


def nearest_classes(classnames, index, k=NEIGHBOURS):
    """Classes whose names look most like ``classnames[index]`` (shared words, then spelling)."""
    mine = texts.display_name(classnames[index]).lower()
    words = set(mine.split())
    scored = []
    for j, other in enumerate(classnames):
        if j == index:
            continue
        name = texts.display_name(other).lower()
        shared = len(words & set(name.split())) / len(words | set(name.split()))
        scored.append((2 * shared + difflib.SequenceMatcher(None, mine, name).ratio(), j))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [texts.display_name(classnames[j]) for _, j in scored[:k]]


def build_messages(key, classnames, index, count, keep=()):
    """Chat messages asking for ``count`` sentences about ``classnames[index]``."""
    domain, opener = DOMAINS.get(key, DEFAULT_DOMAIN)
    name = texts.display_name(classnames[index])
    start = opener.format(a=article(name), name=name)
    lines = [
        "Dataset: {}.".format(domain),
        'Class: "{}".'.format(name),
        "Classes with similar names: {}.".format(", ".join(nearest_classes(classnames, index))),
    ]
    if len(classnames) <= LIST_ALL_UP_TO:
        others = [texts.display_name(c) for j, c in enumerate(classnames) if j != index]
        lines.append("All other classes of the dataset: {}.".format(", ".join(others)))
    lines += [
        "",
        "Write {} different sentences about how {} {} looks in such images.".format(count, article(name), name),
        'Every sentence starts with exactly "{}," and then names one concrete visible trait: shape, '
        "proportions, colour, markings, parts, texture, typical background or viewpoint.".format(start),
        "Prefer traits that tell it apart from the most similar-looking classes above; you may name those "
        'classes after the comma ("unlike the ..."), never before it.',
        "Keep each sentence under 40 words. No history, taste, popularity or other facts that cannot be seen.",
    ]
    if keep:
        lines.append("Do not repeat or rephrase these sentences: " + " | ".join(keep))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d+[.):]|\d+\s*-)\s*")


def split_reply(content):
    """Sentences in a reply: one per line (numbering, bullets, quotes removed), or a JSON list of strings."""
    text = content.strip()
    fence = re.match(r"^```[a-zA-Z]*\n(.*?)\n?```$", text, re.S)
    if fence:
        text = fence.group(1).strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
            if isinstance(items, list) and all(isinstance(s, str) for s in items):
                return [" ".join(s.split()) for s in items if s.strip()]
        except ValueError:
            pass
    out = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip().strip('"').strip("\u201c\u201d").strip()
        if line:
            out.append(" ".join(line.split()))
    return out


# ---------------------------------------------------------------- generation

def _read_existing(out_path, classnames):
    """Sentences already generated (resume); classes with an empty list count as not done."""
    if not osp.isfile(out_path):
        return {}
    try:
        with open(out_path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise UserError("{} exists but is not valid JSON ({}); delete it or choose another --out".format(out_path, exc)) from None
    if not isinstance(data, dict):
        raise UserError("{} exists but is not a {{classname: [sentences]}} object; choose another --out".format(out_path))
    foreign = [k for k in data if k not in set(classnames)]
    if foreign:
        raise UserError("{} holds keys that are not classes of this dataset (e.g. {!r}); wrong --out?".format(out_path, foreign[0]))
    return {k: v for k, v in data.items() if isinstance(v, list) and v}


def _write(out_path, done, classnames):
    ordered = {c: done[c] for c in classnames if c in done}
    atomic_write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n", out_path)


def generate(key, classnames, out_path, client, per_class=check.MIN_SENTENCES, max_requests=3, log=print):
    """Fill ``out_path`` with ``per_class`` checked sentences for every class; returns the dict written."""
    done = _read_existing(out_path, classnames)
    rule = check.SubjectRule(classnames)
    seen = {check.dedup_key(s) for sentences in done.values() for s in sentences}
    todo = [i for i, c in enumerate(classnames) if c not in done]
    if not todo:
        log("{}: all {} classes already present, nothing to do".format(out_path, len(classnames)))
    for n, i in enumerate(todo, 1):
        cname = classnames[i]
        kept, rejected, reasons = [], 0, collections.Counter()
        for request in range(1, max_requests + 1):
            want = per_class - len(kept)
            reply = client.complete(build_messages(key, classnames, i, want + 2, keep=kept))
            for s in split_reply(reply):
                d = check.dedup_key(s)
                problems = ["a duplicate"] if d in seen else check.sentence_problems(s, cname, rule)
                if problems:
                    rejected += 1
                    reasons[problems[0]] += 1
                    continue
                seen.add(d)
                kept.append(s)
                if len(kept) == per_class:
                    break
            if len(kept) == per_class:
                break
        if len(kept) < per_class:
            why = "; most often: {} ({} times)".format(*reasons.most_common(1)[0]) if reasons else ""
            raise UserError(
                "class {!r}: only {} of {} sentences passed the checks after {} request(s) ({} rejected{}); "
                "re-run to resume, or try another --model / --temperature".format(
                    cname, len(kept), per_class, max_requests, rejected, why)
            )
        done[cname] = kept
        _write(out_path, done, classnames)
        log("[{}/{}] {}: {} sentences ({} request(s), {} rejected)".format(n, len(todo), cname, len(kept), request, rejected))
    return {c: done[c] for c in classnames if c in done}


def main(argv=None):
    p = argparse.ArgumentParser(description="Generate per-class visual descriptions with an OpenAI-compatible endpoint.")
    p.add_argument("--dataset", required=True, metavar="KEY", help="dataset key (class list datasets/classnames/KEY.txt)")
    p.add_argument("--classnames", help="use this class-name list instead of the dataset's")
    p.add_argument("--out", required=True, help="output JSON (resumed if it exists)")
    p.add_argument("--per-class", type=int, help="sentences per class (default 10)")
    p.add_argument("--model", help="model name (env DESCRIPTIONS_MODEL)")
    p.add_argument("--endpoint", help="API base URL, e.g. https://api.openai.com/v1 (env OPENAI_BASE_URL)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.7)")
    p.add_argument("--config", help="YAML/JSON file with endpoint, model, api_key, temperature, ...")
    p.add_argument("--timeout", type=float, help="seconds per HTTP request, reply included (default 120)")
    p.add_argument("--max-reply-bytes", type=int, help="largest reply accepted (default 4 MiB)")
    p.add_argument("--retries", type=int, help="retries on 429/5xx/connection errors (default 5)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time")
    p.add_argument("--max-requests", type=int, default=3, help="requests per class before giving up")
    args = p.parse_args(argv)
    try:
        s = resolve_settings(args)
        classnames = texts.read_classnames_file(args.classnames) if args.classnames else texts.read_classnames(args.dataset)
        client = ChatClient(s["endpoint"], s["model"], s["api_key"], s["temperature"], s["timeout"], s["retries"],
                            args.backoff, max_reply_bytes=s["max_reply_bytes"])
        generate(args.dataset, classnames, args.out, client, s["per_class"], args.max_requests)
    except UserError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("interrupted; finished classes are saved in {}, re-run to resume".format(args.out), file=sys.stderr)
        return 130
    print("wrote {}; check it with: python -m tools.check_descriptions --file {} --dataset {}".format(
        args.out, args.out, args.dataset) if not args.classnames else "wrote {}".format(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
