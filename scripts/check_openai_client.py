"""Interop check: the official `openai` Python package as the client of `zhiku serve`.

Starts `zhiku serve` with a GGUF language model on a free port, then through `openai.OpenAI`:
lists models, asks a chat completion (whole and streamed; the streamed text must equal the
whole one at temperature 0), a text completion with a stop string, the same seed twice, usage
in the stream, and an out-of-range temperature (must raise a 422 error). Prints what it saw and
exits non-zero on any mismatch.

Run: python scripts/check_openai_client.py target/release/zhiku .cache/models/smollm2-135m-instruct-q4_1.gguf
(needs `pip install openai`)
"""
import subprocess, sys, re, json
import openai

zhiku, model_path = sys.argv[1], sys.argv[2]
proc = subprocess.Popen([zhiku, "serve", "--port", "0", "--model", f"llm={model_path}"], stderr=subprocess.PIPE, text=True)
try:
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            addr = m.group(1)
            break
    assert addr, "server did not start"
    client = openai.OpenAI(base_url=addr + "/v1", api_key="unused")
    seen = {}
    models = [m.id for m in client.models.list().data]
    assert models == ["llm"], models
    messages = [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "What is a library?"}]
    whole = client.chat.completions.create(model="llm", messages=messages, temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert whole.usage.completion_tokens > 0 and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    pieces, usage = [], None
    for chunk in client.chat.completions.create(model="llm", messages=messages, temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == text, ("".join(pieces), text)
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    seen["chat"] = text
    seen["stream_chunks"] = len(pieces)
    c = client.completions.create(model="llm", prompt="1, 2, 3, 4,", temperature=0, max_tokens=16, stop=[","])
    assert c.choices[0].finish_reason == "stop" and "," not in c.choices[0].text
    seen["completion_with_stop"] = c.choices[0].text
    a = client.completions.create(model="llm", prompt="Once upon a time", temperature=1.0, seed=5, max_tokens=12).choices[0].text
    b = client.completions.create(model="llm", prompt="Once upon a time", temperature=1.0, seed=5, max_tokens=12).choices[0].text
    assert a == b, (a, b)
    seen["seeded"] = a
    try:
        client.chat.completions.create(model="llm", messages=messages, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.UnprocessableEntityError as e:
        seen["error"] = e.status_code
    print(json.dumps({"ok": True, **seen}, ensure_ascii=False))
finally:
    proc.terminate()
    proc.wait()
