"""Drives `koala serve-model` with the official `openai` Python client, unchanged.

Usage: python openai_client_check.py BASE_URL MODEL
Prints one JSON object with what it saw; the Rust test (tests/serve_model_cli.rs) asserts on it.
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
out = {"models": [m.id for m in client.models.list().data]}

messages = [{"role": "user", "content": "Give three tips for staying healthy."}]
whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=40)
out["chat_text"] = whole.choices[0].message.content
out["chat_finish"] = whole.choices[0].finish_reason
out["chat_usage"] = whole.usage.model_dump()

stream = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=40, stream=True,
    stream_options={"include_usage": True})
pieces, roles, finishes, usage = [], [], [], None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finishes.append(c.finish_reason)
out["stream_text"] = "".join(pieces)
out["stream_roles"] = roles
out["stream_finishes"] = finishes
out["stream_usage"] = usage

comp = client.completions.create(model=model, prompt="Translate the following", max_tokens=10, temperature=0)
out["completion_text"] = comp.choices[0].text
out["completion_finish"] = comp.choices[0].finish_reason
text = "".join(c.choices[0].text for c in client.completions.create(
    model=model, prompt="Translate the following", max_tokens=10, temperature=0, stream=True) if c.choices)
out["completion_stream_text"] = text

try:
    client.chat.completions.create(model=model, messages=messages, n=2)
    out["n2_error"] = None
except openai.BadRequestError as e:
    out["n2_error"] = {"status": e.status_code, "param": e.body.get("param") if isinstance(e.body, dict) else None}
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    out["unknown_model_error"] = None
except openai.NotFoundError as e:
    out["unknown_model_error"] = {"status": e.status_code}
print(json.dumps(out))
