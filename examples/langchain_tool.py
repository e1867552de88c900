"""A LangChain tool that runs Python in an LLMSafeSpace sandbox.

``make_tool(sandbox)`` answers a LangChain ``StructuredTool`` named
``run_python``; its body is ``run_python(sandbox, code)``, which needs no
LangChain. ``ask()`` binds the tool to a chat model (``langchain-openai``)
and runs the tool calls it makes. LangChain is imported only inside those
two functions, so this module imports without it.

    export LLMSAFESPACE_API_KEY=... OPENAI_API_KEY=...
    python3 examples/langchain_tool.py "What is the mean of 1..1000?"
"""

import sys

from llmsafespace import LLMSafeSpaceError, Sandbox

MAX_OUTPUT = 10000

DESCRIPTION = (
    "Run Python 3 code in an isolated sandbox and return what it printed "
    "(stdout, then stderr) and its exit code. Files stay between calls, "
    "variables do not. numpy is installed; there is no network access.")


def run_python(sandbox, code, timeout=None):
    """The tool's body: run ``code``, answer a text for the model."""
    try:
        r = sandbox.run_code(code, timeout=timeout)
    except LLMSafeSpaceError as e:
        return "error: %s" % e
    parts = []
    if r.stdout:
        parts.append(r.stdout[:MAX_OUTPUT])
    if r.stderr:
        parts.append("[stderr]\n" + r.stderr[:MAX_OUTPUT])
    if r.status == "timeout":
        parts.append("[stopped: out of time]")
    elif r.truncated or len(r.stdout) > MAX_OUTPUT or \
            len(r.stderr) > MAX_OUTPUT:
        parts.append("[output cut]")
    parts.append("[exit code %s]" % r.exit_code)
    return "\n".join(parts)


def make_tool(sandbox):
    """The LangChain tool around ``sandbox`` (needs langchain-core)."""
    from langchain_core.tools import StructuredTool
    from pydantic import BaseModel, Field

    class RunPythonInput(BaseModel):
        code: str = Field(description="The Python source to run.")
        timeout: int = Field(default=30, ge=1, le=300,
                             description="Seconds before it is stopped.")

    def _run(code, timeout=30):
        return run_python(sandbox, code, timeout)

    return StructuredTool.from_function(
        func=_run, name="run_python", description=DESCRIPTION,
        args_schema=RunPythonInput)


def ask(question, model="gpt-4o-mini", max_turns=6):
    """Ask a chat model that may call the tool (needs langchain-openai)."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    with Sandbox("python") as sandbox:
        tool = make_tool(sandbox)
        llm = ChatOpenAI(model=model).bind_tools([tool])
        messages = [HumanMessage(question)]
        for _ in range(max_turns):
            ai = llm.invoke(messages)
            messages.append(ai)
            if not ai.tool_calls:
                return ai.content
            for call in ai.tool_calls:
                # invoked with the whole tool call, a tool answers the
                # ToolMessage that goes back to the model
                messages.append(tool.invoke(call))
    return "(no answer after %d rounds)" % max_turns


if __name__ == "__main__":
    print(ask(" ".join(sys.argv[1:]) or "What is the sum of 1..1000?"))
