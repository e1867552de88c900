"""An OpenAI-style function-calling tool that runs Python in an
LLMSafeSpace sandbox.

``TOOL`` is the tool definition to pass in ``tools=[...]``;
``handle_tool_call(sandbox, tool_call)`` runs one call the model made and
answers the ``{"role": "tool", ...}`` message to send back. ``chat()``
puts both in a loop with the ``openai`` package (imported only there, so
this module imports without it).

    export LLMSAFESPACE_API_KEY=... OPENAI_API_KEY=...
    python3 examples/openai_tool.py "What is the 90th Fibonacci number?"
"""

import json
import sys

from llmsafespace import LLMSafeSpaceError, Sandbox

# what the model gets back is bounded: a runaway print must not flood
# the conversation (the sandbox itself caps output at 1 MiB per stream)
MAX_OUTPUT = 10000

TOOL = {
    "type": "function",
    "function": {
        "name": "run_python",
        "description": (
            "Run Python 3 code in an isolated sandbox and return its "
            "stdout, stderr and exit code. Print what you want to see. "
            "Files written under the working directory stay for later "
            "calls; variables do not. numpy is installed; there is no "
            "network access."),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string",
                         "description": "The Python source to run."},
                "timeout": {"type": "integer", "minimum": 1,
                            "maximum": 300,
                            "description": "Seconds before the run is "
                                           "stopped (default 30)."},
            },
            "required": ["code"],
            "additionalProperties": False,
        },
    },
}


def _clip(text):
    if len(text) <= MAX_OUTPUT:
        return text
    return text[:MAX_OUTPUT] + "\n[... %d more characters]" % (
        len(text) - MAX_OUTPUT)


def run_python(sandbox, code, timeout=None):
    """The tool's body: run ``code`` and answer a JSON-ready dict."""
    r = sandbox.run_code(code, timeout=timeout)
    out = {"status": r.status, "exit_code": r.exit_code,
           "stdout": _clip(r.stdout), "stderr": _clip(r.stderr)}
    if r.truncated:
        out["note"] = "output was cut at the sandbox's limit"
    if r.status == "timeout":
        out["note"] = "the code ran out of time and was stopped"
    return out


def _field(obj, name):
    # the openai package gives objects, raw JSON gives dicts
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name)


def handle_tool_call(sandbox, tool_call):
    """Run one tool call of the model's (an openai ``ChatCompletion``
    tool call, or its dict form) and answer the tool message."""
    fn = _field(tool_call, "function")
    name, raw = _field(fn, "name"), _field(fn, "arguments")
    if name != TOOL["function"]["name"]:
        result = {"error": "unknown tool %r" % name}
    else:
        try:
            args = json.loads(raw or "{}")
            if not isinstance(args, dict) or \
                    not isinstance(args.get("code"), str):
                raise ValueError("'code' (a string) is required")
            result = run_python(sandbox, args["code"], args.get("timeout"))
        except ValueError as e:
            # the model sent malformed arguments: tell it, it can retry
            result = {"error": "invalid arguments: %s" % e}
        except LLMSafeSpaceError as e:
            # refused (a bad timeout...) or the sandbox is gone: the model
            # gets the message; errors of the caller's own (bad key, no
            # server) are raised by the next call anyway
            result = {"error": str(e)}
    return {"role": "tool", "tool_call_id": _field(tool_call, "id"),
            "content": json.dumps(result)}


def chat(question, model="gpt-4o-mini", max_turns=6):
    """Ask ``question``; the model may run code as often as it needs
    (at most ``max_turns`` rounds). Answers the model's last text."""
    from openai import OpenAI

    client = OpenAI()
    messages = [
        {"role": "system",
         "content": "Use the run_python tool to compute anything you are "
                    "not sure of."},
        {"role": "user", "content": question},
    ]
    with Sandbox("python") as sandbox:
        for _ in range(max_turns):
            reply = client.chat.completions.create(
                model=model, messages=messages, tools=[TOOL])
            msg = reply.choices[0].message
            messages.append(msg)
            if not msg.tool_calls:
                return msg.content
            for call in msg.tool_calls:
                messages.append(handle_tool_call(sandbox, call))
    return "(no answer after %d rounds)" % max_turns


if __name__ == "__main__":
    print(chat(" ".join(sys.argv[1:]) or "What is 2**100?"))
