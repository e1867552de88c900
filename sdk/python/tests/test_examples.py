"""examples/: they import without openai or LangChain, and their tool
handlers work against the real stack."""

import importlib.util
import json
import os

import pytest

from conftest import TOP


def _load(name):
    path = os.path.join(TOP, "examples", name + ".py")
    spec = importlib.util.spec_from_file_location("example_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


openai_tool = _load("openai_tool")
langchain_tool = _load("langchain_tool")


def test_openai_tool_definition():
    fn = openai_tool.TOOL["function"]
    assert openai_tool.TOOL["type"] == "function"
    assert fn["parameters"]["required"] == ["code"]
    json.dumps(openai_tool.TOOL)  # sendable as is


def _call(arguments, call_id="call_1", name="run_python"):
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def test_openai_tool_call(sandbox):
    msg = openai_tool.handle_tool_call(
        sandbox, _call(json.dumps({"code": "print(sum(range(101)))"})))
    assert msg["role"] == "tool" and msg["tool_call_id"] == "call_1"
    result = json.loads(msg["content"])
    assert result["stdout"] == "5050\n" and result["exit_code"] == 0

    # what the model gets for its mistakes is a message, not a crash
    bad = json.loads(openai_tool.handle_tool_call(
        sandbox, _call("{not json"))["content"])
    assert "invalid arguments" in bad["error"]
    refused = json.loads(openai_tool.handle_tool_call(
        sandbox, _call(json.dumps({"code": "1", "timeout": 10 ** 6})))
        ["content"])
    assert "timeout" in refused["error"]
    other = json.loads(openai_tool.handle_tool_call(
        sandbox, _call("{}", name="rm_rf"))["content"])
    assert "unknown tool" in other["error"]

    slow = json.loads(openai_tool.handle_tool_call(
        sandbox, _call(json.dumps({"code": "while 1: pass", "timeout": 1})))
        ["content"])
    assert slow["status"] == "timeout" and "note" in slow


def test_langchain_tool_body(sandbox):
    text = langchain_tool.run_python(
        sandbox, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n"
                 "sys.exit(2)")
    assert text == "out\n\n[stderr]\nerr\n\n[exit code 2]"


def test_langchain_tool_needs_langchain(sandbox):
    try:
        __import__("langchain_core")
    except ImportError:
        with pytest.raises(ImportError):
            langchain_tool.make_tool(sandbox)
        return
    tool = langchain_tool.make_tool(sandbox)
    assert tool.name == "run_python"
    assert tool.invoke({"code": "print(3)"}).startswith("3\n")
