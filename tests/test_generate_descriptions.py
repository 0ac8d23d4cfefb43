"""tools/generate_descriptions.py against a stub OpenAI-compatible server on 127.0.0.1 (no real network)."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fairclip.datasets import texts
from fairclip.toolbox.errors import UserError
from fairclip.tools import check_descriptions as cd
from fairclip.tools import generate_descriptions as gd

CLASSES = ["ant", "crocodile", "crocodile_head", "sea_horse", "crème_brûlée"]


class Stub:
    """What the fake endpoint answers; ``script`` maps a request number (1-based) to a special reply."""

    def __init__(self):
        self.requests = []  # (headers, body) of every request received
        self.paths = []  # request paths (absolute URLs when the stub is used as a proxy)
        self.script = {}  # request number -> (status, body bytes, extra headers)
        self.fail_class = None  # class display name answered with HTTP 400
        self.bad_lines = False  # mix rejectable lines into the first reply for each class
        self.asked = {}  # class -> number of requests for it

    def reply(self, body):
        n = len(self.requests)
        if n in self.script:
            return self.script[n]
        prompt = body["messages"][-1]["content"]
        name = re.search(r'Class: "(.*?)"', prompt).group(1)
        if name == self.fail_class:
            return 400, b'{"error": {"message": "stub refuses this class"}}', {}
        start = re.search(r'starts with exactly "(.*?),"', prompt).group(1)
        count = int(re.search(r"Write (\d+) different sentences", prompt).group(1))
        k = self.asked[name] = self.asked.get(name, 0) + 1
        lines = ["{}. {}, showing visible detail {} of request {}.".format(i + 1, start, i, k) for i in range(count)]
        if self.bad_lines and k == 1:
            other = "sea horse" if name != "sea horse" else "ant"
            lines = lines[:4] + [
                "A photo of a {} next to {}, wrong subject.".format(other, name),  # names another class
                start + ", " + " ".join(["long"] * 80) + ".",  # over 77 tokens
                lines[0].split(". ", 1)[1],  # duplicate of the first line
                "",
            ]
        content = "\n".join(lines)
        return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode(), {}


def serve(state):
    """Start a threaded HTTP server answering with ``state.reply``; returns the server (its URL is set on
    ``state.url``). A reply may also be a callable that writes the raw answer itself."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append((dict(self.headers), body))
            state.paths.append(self.path)
            reply = state.reply(body)
            if callable(reply):
                try:
                    reply(self)
                except OSError:  # the client hung up (what a deadline does)
                    pass
                return
            status, payload, headers = reply
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = "http://127.0.0.1:{}/v1".format(server.server_address[1])
    return server


@pytest.fixture
def stub():
    state = Stub()
    server = serve(state)
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("OPENAI_BASE_URL", "DESCRIPTIONS_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def classes_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return str(path)


def run(stub, classes_file, out, *extra):
    return gd.main(["--dataset", "caltech101", "--classnames", classes_file, "--out", str(out),
                    "--endpoint", stub.url, "--model", "stub-model", "--backoff", "0.01", *extra])


def test_generates_checked_descriptions(stub, classes_file, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "out.json"
    assert run(stub, classes_file, out, "--temperature", "0.3") == 0
    assert cd.check_file(str(out), CLASSES) == []
    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data) == CLASSES and all(len(v) == 10 for v in data.values())
    assert "crème brûlée" in out.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
    assert len(stub.requests) == len(CLASSES)
    headers, body = stub.requests[0]
    assert body["model"] == "stub-model" and body["temperature"] == 0.3
    assert headers["Authorization"] == "Bearer sk-test"
    prompt = body["messages"][-1]["content"]
    assert "Caltech-101" in prompt and 'starts with exactly "A photo of an ant,"' in prompt
    assert "crocodile head" in prompt  # other classes are named for contrast


def test_rejected_lines_are_dropped_and_the_class_asked_again(stub, classes_file, tmp_path):
    stub.bad_lines = True
    out = tmp_path / "out.json"
    assert run(stub, classes_file, out) == 0
    assert cd.check_file(str(out), CLASSES) == []
    assert len(stub.requests) == 2 * len(CLASSES)  # 4 usable lines in the first reply, 6 more asked for
    second = stub.requests[1][1]["messages"][-1]["content"]
    assert "Write 8 different sentences" in second and "Do not repeat" in second


def test_resume_after_interruption(stub, classes_file, tmp_path, capsys):
    out = tmp_path / "out.json"
    stub.fail_class = "crocodile head"  # the 3rd class
    assert run(stub, classes_file, out) == 2
    err = capsys.readouterr().err
    assert "ERROR: HTTP 400 from {}/chat/completions".format(stub.url) in err and "stub refuses" in err
    partial = json.loads(out.read_text(encoding="utf-8"))
    assert list(partial) == ["ant", "crocodile"]

    stub.fail_class = None
    before = len(stub.requests)
    assert run(stub, classes_file, out) == 0
    asked = [r[1]["messages"][-1]["content"] for r in stub.requests[before:]]
    assert len(asked) == 3 and 'Class: "crocodile head"' in asked[0]  # finished classes are skipped
    final = json.loads(out.read_text(encoding="utf-8"))
    assert list(final) == CLASSES and final["ant"] == partial["ant"]
    assert cd.check_file(str(out), CLASSES) == []


@pytest.mark.parametrize("status, headers", [(500, {}), (503, {}), (429, {"Retry-After": "0"})])
def test_retries_then_succeeds(stub, classes_file, tmp_path, status, headers):
    stub.script = {1: (status, b"temporarily unavailable", headers)}
    out = tmp_path / "out.json"
    assert run(stub, classes_file, out) == 0
    assert len(stub.requests) == len(CLASSES) + 1
    assert cd.check_file(str(out), CLASSES) == []


def test_gives_up_after_retries_with_status_and_body(stub, classes_file, tmp_path, capsys):
    stub.script = {n: (502, b"bad gateway from upstream", {}) for n in range(1, 10)}
    assert run(stub, classes_file, tmp_path / "out.json", "--retries", "2") == 2
    err = capsys.readouterr().err
    assert "HTTP 502" in err and "after 3 tries" in err and "bad gateway from upstream" in err
    assert len(stub.requests) == 3
    assert not (tmp_path / "out.json").exists()


def test_client_error_is_not_retried(stub, classes_file, tmp_path, capsys):
    stub.script = {1: (401, b'{"error": "invalid api key"}', {})}
    assert run(stub, classes_file, tmp_path / "out.json") == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "invalid api key" in err and "OPENAI_API_KEY" in err
    assert len(stub.requests) == 1


@pytest.mark.parametrize("payload", [b'{"id": "x", "object": "chat.completion"}', b"<html>not json</html>",
                                     b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}'])
def test_malformed_reply(stub, classes_file, tmp_path, capsys, payload):
    stub.script = {1: (200, payload, {})}
    assert run(stub, classes_file, tmp_path / "out.json") == 2
    assert "ERROR: malformed reply from" in capsys.readouterr().err


def test_unreachable_endpoint(classes_file, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = gd.main(["--dataset", "caltech101", "--classnames", classes_file, "--out", str(tmp_path / "o.json"),
                    "--endpoint", "http://127.0.0.1:{}/v1".format(port), "--model", "m", "--retries", "1",
                    "--backoff", "0.01"])
    assert code == 2 and "cannot reach" in capsys.readouterr().err


def test_settings_from_env_and_config(stub, classes_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.json"
    args = ["--dataset", "caltech101", "--classnames", classes_file, "--out", str(out), "--backoff", "0.01"]
    assert gd.main(args) == 2
    assert "no endpoint configured" in capsys.readouterr().err

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # overridden by the config file
    config = tmp_path / "gen.yaml"
    config.write_text("endpoint: {}\nmodel: from-config\nper_class: 3\n".format(stub.url), encoding="utf-8")
    assert gd.main(args + ["--config", str(config)]) == 0
    assert stub.requests[0][1]["model"] == "from-config"
    assert all(len(v) == 3 for v in json.loads(out.read_text(encoding="utf-8")).values())

    config.write_text("endpoint: x\nmodle: typo\n", encoding="utf-8")
    assert gd.main(args + ["--config", str(config)]) == 2
    assert "unknown key(s) modle" in capsys.readouterr().err


def test_existing_output_for_another_dataset_is_refused(stub, classes_file, tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"banana": ["A photo of a banana, yellow."]}), encoding="utf-8")
    assert run(stub, classes_file, out) == 2
    assert "not classes of this dataset" in capsys.readouterr().err
    assert stub.requests == []


def test_proxy_is_used_for_remote_endpoints_but_not_for_loopback(stub, classes_file, tmp_path, monkeypatch):
    base = stub.url[: -len("/v1")]
    for var in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, base)  # the stub doubles as the proxy: nothing leaves this machine
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = gd.ChatClient("http://llm.example.invalid/v1", "m", backoff=0.01)
    assert client.complete([{"role": "user", "content": 'Class: "ant". starts with exactly "A photo of an ant," '
                                                       "Write 1 different sentences"}])
    assert stub.paths[-1] == "http://llm.example.invalid/v1/chat/completions"

    for var in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a dead proxy: loopback endpoints must bypass it
    assert run(stub, classes_file, tmp_path / "out.json") == 0
    assert stub.paths[-1] == "/v1/chat/completions"


def test_split_reply_formats():
    assert gd.split_reply('1. "First one."\n2) Second one.\n\n- Third one.\n* Fourth  one.') == [
        "First one.", "Second one.", "Third one.", "Fourth one."]
    assert gd.split_reply('```json\n["A.", "B."]\n```') == ["A.", "B."]
    assert gd.chat_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert gd.chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_nearest_classes_prefer_shared_words():
    names = ["crocodile", "ant", "crocodile_head", "flamingo_head", "sea_horse"]
    assert gd.nearest_classes(names, 2, k=2) == ["crocodile", "flamingo head"]


def test_parse_completion_rejects_non_text():
    with pytest.raises(UserError, match="malformed reply"):
        gd.parse_completion(b'{"choices": [{"message": {}}]}')
    assert gd.parse_completion(b'{"choices": [{"message": {"content": "hi"}}]}') == "hi"


def test_every_dataset_with_a_class_list_has_a_domain():
    missing = [k for k in texts.available_classname_keys() if k not in gd.DOMAINS]
    assert missing == []


# --------------------------------------------------------------------------- hostile or broken servers
def test_redirects_are_refused_and_the_key_never_leaves_the_host(stub, classes_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    other = Stub()
    other_server = serve(other)
    try:
        port = other.url.rsplit(":", 1)[1].split("/")[0]
        elsewhere = "http://localhost:{}/v1/chat/completions".format(port)  # another host name, same machine
        for code in (302, 307):
            stub.script = {len(stub.requests) + 1: (code, b"", {"Location": elsewhere})}
            assert run(stub, classes_file, tmp_path / "out.json") == 2
            err = capsys.readouterr().err
            assert "redirects (HTTP {}) to another host, {}".format(code, elsewhere) in err
            assert "sk-secret-123" not in err and err.count("\n") == 1
        assert other.requests == []  # nothing, and no key, reached the other host
    finally:
        other_server.shutdown()
        other_server.server_close()


def test_the_key_is_never_printed(stub, classes_file, tmp_path, monkeypatch, capsys):
    def echo_key(handler):  # a server that echoes the request's Authorization header in its error
        payload = "bad key: {}".format(handler.headers["Authorization"]).encode()
        handler.send_response(401)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    stub.script = {1: echo_key}
    assert run(stub, classes_file, tmp_path / "out.json") == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "bad key: Bearer ***" in err and "sk-secret" not in err


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_is_cut_off_at_the_timeout(stub, classes_file, tmp_path, capsys, where):
    def trickle(handler):  # one byte every 50 ms: a per-read socket timeout would never fire
        head = b"HTTP/1.0 200 OK\r\nContent-Length: 10000\r\n\r\n"
        first, rest = (b"", head) if where == "headers" else (head, b" " * 10000)
        handler.wfile.write(first)
        for i in range(len(rest)):
            handler.wfile.write(rest[i:i + 1])
            time.sleep(0.05)

    stub.script = {1: trickle}
    start = time.monotonic()
    assert run(stub, classes_file, tmp_path / "out.json", "--timeout", "0.6", "--retries", "0") == 2
    assert time.monotonic() - start < 3
    err = capsys.readouterr().err
    assert "no complete reply from {}/chat/completions within --timeout 0.6 s".format(stub.url) in err


def test_oversized_and_truncated_replies_are_one_line(stub, classes_file, tmp_path, capsys):
    big = b"x" * 300000

    def unannounced(handler):  # no Content-Length: the body ends when the connection closes
        handler.wfile.write(b"HTTP/1.0 200 OK\r\n\r\n" + big)

    def truncated(handler):  # announces 1000 bytes, sends 100, hangs up
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"{" * 100)

    cases = [((200, big, {}), "announces 300000 bytes, over --max-reply-bytes 100000"),
             (unannounced, "exceeds --max-reply-bytes 100000"),
             (truncated, "incomplete reply from {}/chat/completions after 1 tries (the connection closed after "
                         "100 bytes, 900 more were announced)".format(stub.url))]
    for reply, message in cases:
        stub.script = {len(stub.requests) + 1: reply}
        assert run(stub, classes_file, tmp_path / "out.json", "--max-reply-bytes", "100000", "--retries", "0") == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_reply_cut_at_the_token_limit_loses_its_unfinished_line():
    body = {"choices": [{"message": {"content": "One.\nTwo.\nThree is cu"}, "finish_reason": "length"}]}
    assert gd.parse_completion(json.dumps(body).encode()) == "One.\nTwo."
    body["choices"][0]["finish_reason"] = "stop"
    assert gd.parse_completion(json.dumps(body).encode()).endswith("cu")


def test_class_names_with_a_comma_can_pass_the_checks(stub, tmp_path):
    """The subject rule ends at the first comma outside the class name: such classes were impossible, and
    the error blamed the model."""
    path = tmp_path / "commas.txt"
    names = ["pepper, bell", "pepper, chili", "ant"]
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    out = tmp_path / "out.json"
    assert gd.main(["--dataset", "caltech101", "--classnames", str(path), "--out", str(out), "--endpoint", stub.url,
                    "--model", "m", "--backoff", "0.01", "--per-class", "3"]) == 0
    assert cd.check_data(json.loads(out.read_text(encoding="utf-8")), names, min_sentences=3)[0] == []
    rule = cd.SubjectRule(names)
    assert rule.problem("A photo of a pepper, bell, glossy.", "pepper, bell") is None
    assert rule.problem("A photo of a pepper, chili, red.", "pepper, bell") is not None
