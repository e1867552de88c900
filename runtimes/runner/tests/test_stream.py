"""GET /stream: the WebSocket protocol of api.md."""

import asyncio
import json

import httpx

from conftest import ws_run, ws_collect, HEADER


def send(ws, **msg):
    return ws.send(json.dumps(msg))


def test_stream_order_and_streams(runner):
    code = ("import sys\n"
            "for i in range(200):\n"
            "    print('out', i)\n"
            "    if i % 50 == 0:\n"
            "        print('err', i, file=sys.stderr)\n")

    async def body(ws):
        await send(ws, type="execute", executionId="e1", mode="code",
                   language="python", content=code)
        return await ws_collect(ws, "e1")

    msgs = ws_run(runner, body)
    assert msgs[0]["type"] == "execution_start"
    assert msgs[-1]["type"] == "execution_complete"
    assert msgs[-1]["exitCode"] == 0 and msgs[-1]["status"] == "completed"
    assert "usage" in msgs[-1] and msgs[-1]["truncated"] is False
    out = "".join(m["content"] for m in msgs
                  if m["type"] == "output" and m["stream"] == "stdout")
    err = "".join(m["content"] for m in msgs
                  if m["type"] == "output" and m["stream"] == "stderr")
    assert out == "".join("out %d\n" % i for i in range(200))
    assert err == "".join("err %d\n" % i for i in range(0, 200, 50))
    assert all(isinstance(m["timestamp"], int) for m in msgs)


def test_stream_command_and_languages(runner):
    async def body(ws):
        await send(ws, type="execute", executionId="c", mode="command",
                   content="echo from-sh")
        a = await ws_collect(ws, "c")
        await send(ws, type="execute", executionId="j", mode="code",
                   language="javascript", content="console.log('js')")
        b = await ws_collect(ws, "j")
        return a, b

    a, b = ws_run(runner, body)
    assert [m["content"] for m in a if m["type"] == "output"] == \
        ["from-sh\n"]
    assert [m["content"] for m in b if m["type"] == "output"] == ["js\n"]


def test_stream_stdin(runner):
    code = ("import sys\n"
            "for line in sys.stdin:\n"
            "    print('got', line.strip(), flush=True)\n")

    async def body(ws):
        await send(ws, type="execute", executionId="s1", mode="code",
                   content=code)
        await send(ws, type="stdin", executionId="s1", content="alpha\n")
        await send(ws, type="stdin", executionId="s1", content="beta\n",
                   eof=True)
        return await ws_collect(ws, "s1")

    msgs = ws_run(runner, body)
    out = "".join(m["content"] for m in msgs if m["type"] == "output")
    assert out == "got alpha\ngot beta\n"
    assert msgs[-1]["exitCode"] == 0


def test_stream_cancel(runner):
    async def body(ws):
        await send(ws, type="execute", executionId="k1", mode="code",
                   content="import time\nprint('up', flush=True)\n"
                           "time.sleep(60)")
        first = json.loads(await ws.recv())
        second = json.loads(await ws.recv())
        await send(ws, type="cancel", executionId="k1")
        rest = await ws_collect(ws, "k1")
        return [first, second] + rest

    msgs = ws_run(runner, body)
    types = [m["type"] for m in msgs]
    assert types[0] == "execution_start"
    assert "execution_cancelled" in types
    assert types[-1] == "execution_complete"
    assert msgs[-1]["status"] == "cancelled"


def test_stream_timeout(runner):
    async def body(ws):
        await send(ws, type="execute", executionId="t1", mode="code",
                   content="while True: pass", timeout=1)
        return await ws_collect(ws, "t1")

    msgs = ws_run(runner, body)
    errs = [m for m in msgs if m["type"] == "error"]
    assert errs and errs[0]["code"] == "execution_timeout"
    assert errs[0]["executionId"] == "t1"
    assert msgs[-1]["type"] == "execution_complete"
    assert msgs[-1]["status"] == "timeout"


def test_stream_concurrent(runner):
    async def body(ws):
        for i in range(4):
            await send(ws, type="execute", executionId="p%d" % i,
                       mode="code",
                       content="import time\nfor j in range(5):\n"
                               "    print(%d, j, flush=True)\n"
                               "    time.sleep(0.05)\n" % i)
        done = {}
        outs = {("p%d" % i): "" for i in range(4)}
        for _ in range(1000):
            m = json.loads(await ws.recv())
            if m["type"] == "output":
                assert m["executionId"] not in done
                outs[m["executionId"]] += m["content"]
            if m["type"] == "execution_complete":
                done[m["executionId"]] = m
            if len(done) == 4:
                return outs, done

    outs, done = ws_run(runner, body)
    for i in range(4):
        assert outs["p%d" % i] == "".join("%d %d\n" % (i, j)
                                          for j in range(5))
        assert done["p%d" % i]["exitCode"] == 0


def test_stream_protocol_errors(runner):
    async def body(ws):
        res = []
        await ws.send(b"\x00\x01binary")
        res.append(json.loads(await ws.recv()))
        await ws.send("not json")
        res.append(json.loads(await ws.recv()))
        await send(ws, type="teleport")
        res.append(json.loads(await ws.recv()))
        await send(ws, type="execute", mode="code", content="1")
        res.append(json.loads(await ws.recv()))
        await send(ws, type="execute", executionId="v", mode="code",
                   language="cobol", content="1")
        res.append(json.loads(await ws.recv()))
        await send(ws, type="cancel", executionId="nobody")
        res.append(json.loads(await ws.recv()))
        await send(ws, type="execute", executionId="u", mode="code",
                   content="1", stdin="x")
        res.append(json.loads(await ws.recv()))
        await send(ws, type="ping", timestamp=12345)
        res.append(json.loads(await ws.recv()))
        # a fragmented text message is reassembled by wslay
        await ws.send(iter(['{"type":"pi', 'ng","timestamp":', '7}']))
        res.append(json.loads(await ws.recv()))
        return res

    r = ws_run(runner, body)
    assert [m["type"] for m in r[:7]] == ["error"] * 7
    assert [m["code"] for m in r[:7]] == [
        "invalid_message", "invalid_message", "unknown_message_type",
        "invalid_request", "invalid_request", "invalid_request",
        "invalid_request"]
    # stdin is its own message on the stream, not an execute field
    assert "stdin" in r[6]["message"], r[6]
    assert r[7] == {"type": "pong", "timestamp": 12345,
                    "serverTime": r[7]["serverTime"]}
    assert r[8]["type"] == "pong" and r[8]["timestamp"] == 7


def test_stream_huge_frame_closes(runner):
    async def body(ws):
        try:
            await ws.send("x" * (9 * 1024 * 1024))
            await ws.recv()
        except Exception as e:
            return e
        return None

    e = ws_run(runner, body)
    assert e is not None and "1009" in str(e)
    # the runner still serves
    assert runner.execute("print(2)")["stdout"] == "2\n"


def test_stream_requires_upgrade(runner):
    r = runner.client.get("/stream")
    assert r.status_code == 400
    c = httpx.Client(transport=httpx.HTTPTransport(uds=runner.sock),
                     base_url="http://runner")
    r = c.get("/stream", headers={"Upgrade": "websocket",
                                  "Connection": "Upgrade",
                                  "Sec-WebSocket-Key": "x",
                                  "Sec-WebSocket-Version": "13",
                                  HEADER: "bad"})
    assert r.status_code == 401
    c.close()


def test_stream_invalid_utf8_output(runner):
    code = ("import sys\n"
            "sys.stdout.buffer.write(b'\\xe2\\x82')\n"
            "sys.stdout.buffer.flush()\n"
            "import time; time.sleep(0.1)\n"
            "sys.stdout.buffer.write(b'\\xac ok \\xff\\x00\\x1b[1m')\n")

    async def body(ws):
        await send(ws, type="execute", executionId="u", mode="code",
                   content=code)
        return await ws_collect(ws, "u")

    msgs = ws_run(runner, body)
    out = "".join(m["content"] for m in msgs if m["type"] == "output")
    # the euro sign cut across two reads arrives whole
    assert out == "\u20ac ok \ufffd\x00\x1b[1m"
