"""Logs never carry a secret or a full personal id, whatever a caller passes."""

import io
import json

from hub.logs import configure, get_logger


def test_secrets_redacted_and_personal_ids_masked():
    out = io.StringIO()
    configure("json", "info", stream=out)
    get_logger(adapter="vendor-a").info(
        "record.state", record_id="r-1", client_secret="s3cr3t-value", password="hunter2",
        settings={"token": "tok-123", "base_url": "http://127.0.0.1"},
        error="GET http://x/?token=abc123 failed for 001234567890 with Bearer eyJhbGciOi",
    )
    line = out.getvalue()
    event = json.loads(line)
    for secret in ("s3cr3t-value", "hunter2", "tok-123", "abc123", "001234567890", "eyJhbGciOi"):
        assert secret not in line
    assert event["client_secret"] == "***" and event["settings"]["token"] == "***"
    assert "*********890" in event["error"]
    assert event["adapter"] == "vendor-a" and event["record_id"] == "r-1"
    assert event["settings"]["base_url"] == "http://127.0.0.1"


def test_console_format_is_readable():
    out = io.StringIO()
    configure("console", "info", stream=out)
    get_logger().info("hub.started", adapters=["a"])
    assert "hub.started" in out.getvalue() and not out.getvalue().startswith("{")
