"""Drives `fleming-worker serve` with the official openai client.

usage: openai_client.py BASE_URL MODEL_NAME
Prints OK at the end; any failed check raises.
"""
import sys

import openai

base, name = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)

models = client.models.list()
assert [m.id for m in models.data] == [name], models

msgs = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Which drug treats zokitis?"}]

r = client.chat.completions.create(model=name, messages=msgs, n=3, temperature=1.0, top_p=0.9,
                                   max_tokens=12, seed=7)
assert len(r.choices) == 3, r
assert [c.index for c in r.choices] == [0, 1, 2]
assert all(c.finish_reason in ("stop", "length") for c in r.choices)
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
again = client.chat.completions.create(model=name, messages=msgs, n=3, temperature=1.0, top_p=0.9,
                                       max_tokens=12, seed=7)
assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices], "seeded runs differ"

# Greedy, long enough to see a stop string cut the text.
g = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=24)
text = g.choices[0].message.content
assert g.choices[0].finish_reason in ("stop", "length")
if len(text) > 4:
    stop = text[2:4]
    s = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=24, stop=[stop])
    assert s.choices[0].finish_reason == "stop", s
    assert s.choices[0].message.content == text[: text.index(stop)], (s.choices[0].message.content, text, stop)

one = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=1)
assert one.choices[0].finish_reason in ("length", "stop")
assert one.usage.completion_tokens == 1

# Streaming gives the same text as the non-streamed greedy call.
parts, finish = {}, {}
for chunk in client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=24,
                                            stream=True, n=2):
    for c in chunk.choices:
        parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
        if c.finish_reason:
            finish[c.index] = c.finish_reason
assert parts == {0: text, 1: text}, (parts, text)
assert set(finish) == {0, 1}

def expect(status, **kw):
    try:
        client.chat.completions.create(**kw)
    except openai.APIStatusError as e:
        assert e.status_code == status, (e.status_code, e.response.text)
        body = e.response.json()
        assert "message" in body["error"] and "type" in body["error"], body
        return
    raise AssertionError(f"expected HTTP {status} for {kw}")

expect(400, model=name, messages=[])
expect(400, model=name, messages=msgs, n=0)
expect(400, model=name, messages=msgs, temperature=-1)
expect(400, model=name, messages=msgs, top_p=0)
expect(400, model=name, messages=msgs, max_tokens=0)
# A max_tokens beyond the context stops at its end; a prompt beyond it is refused with
# OpenAI's code for that.
long = client.chat.completions.create(model=name, messages=msgs, max_tokens=10**9, temperature=0)
assert long.usage.prompt_tokens + long.usage.completion_tokens <= 512, long.usage
try:
    client.chat.completions.create(model=name, messages=[{"role": "user", "content": "case " * 2000}])
    raise AssertionError("a prompt beyond the context was answered")
except openai.BadRequestError as e:
    assert e.response.json()["error"]["code"] == "context_length_exceeded", e.response.text
expect(400, model=name, messages=msgs, stop=["a", "b", "c", "d", "e"])
expect(400, model=name, messages=[{"role": "wizard", "content": "x"}])
expect(404, model="no-such-model", messages=msgs)

import json
import urllib.request

def raw(body, path="/chat/completions", method="POST"):
    req = urllib.request.Request(base + path, data=body, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

status, body = raw(b"{not json")
assert status == 400 and body["error"]["type"] == "invalid_request_error", body
status, body = raw(b"[1, 2]")
assert status == 400, body
status, body = raw(json.dumps({"model": name, "messages": msgs, "n": "two"}).encode())
assert status == 400 and body["error"]["param"] == "n", body
status, body = raw(b"{}", path="/nope")
assert status == 404 and "error" in body, body

# Still alive and answering after all of that.
assert client.chat.completions.create(model=name, messages=msgs, max_tokens=2, temperature=0).choices
print("OK")
