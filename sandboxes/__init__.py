"""Sandboxes: where built-in tools run (issue 4). The harness calls `sandboxes.toolset.run_tool`:

    run_tool(*, session: Session, name: str, tool_input: dict, tool_use_id: str,
             cancel: threading.Event | None = None) -> ToolOutcome

ToolOutcome(content: list[dict] (Messages API tool_result content blocks: text/image/document),
            is_error: bool). It never raises for a tool failure: errors come back as is_error=True.
"""
