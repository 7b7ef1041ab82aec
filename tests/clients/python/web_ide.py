"""Usage tracking for a Python web app with the OpenTelemetry SDK: one helper per usage event.

Each helper sends one OTLP log record (a program run may also be a span) to the usage
collector, which writes the row the old tracker's INSERT wrote. Recording never blocks a
request: records are queued and exported in batches on the SDK's own thread.

The SDK reads the standard variables: OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT
(http://collector:4318 for http/protobuf, http://collector:4317 for grpc),
OTEL_EXPORTER_OTLP_HEADERS (authorization=Bearer%20<token>) and OTEL_EXPORTER_OTLP_TIMEOUT.
OTEL_EXPORTER_OTLP_PROTOCOL picks the exporter: http/protobuf (the default) or grpc.
"""

import atexit
import json
import os
import sys
import time
import uuid
from contextlib import contextmanager

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

# Once per process (with a pre-forking server such as gunicorn: in each worker, after the fork).
_resource = Resource.create()  # service.name from OTEL_SERVICE_NAME
_logs = LoggerProvider(resource=_resource)
_logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
_traces = TracerProvider(resource=_resource)
_traces.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
_logger = _logs.get_logger("usage")
_tracer = _traces.get_tracer("usage")


@atexit.register
def flush_usage_events():
    """Sends what is still queued (on exit; call it yourself in a worker that stops)."""
    _logs.shutdown()
    _traces.shutdown()


def usage_event(event_name, attributes):
    """Any event: the catalogue's land in their tables, any other name in usage_events."""
    attributes = {key: value for key, value in attributes.items() if value is not None}
    attributes["event.id"] = str(uuid.uuid4())  # the collector writes a retried event once
    _logger.emit(event_name=event_name, timestamp=time.time_ns(), attributes=attributes)


def page_visit(path, session_id=None, user_id=None, referrer=None, user_agent=None,
               client_address=None):
    """A row in page_visits (page_path, referrer, user_agent, ip_address)."""
    usage_event("page_visit", {
        "url.path": path, "session.id": session_id, "user.id": user_id,
        "http.request.header.referer": referrer, "user_agent.original": user_agent,
        "client.address": client_address})


def session_start(session_id, user_id=None, user_agent=None, client_address=None):
    """Creates the session's row in ide_sessions (start_time, user_agent, ip_address)."""
    usage_event("session_start", {
        "session.id": session_id, "user.id": user_id, "user_agent.original": user_agent,
        "client.address": client_address})


def session_end(session_id):
    """Sets the session's end_time and duration_seconds."""
    usage_event("session_end", {"session.id": session_id})


def program_execution(session_id, lines, lines_executed, duration_ms, error_message=None,
                      user_id=None):
    """A row in program_executions, for a run the app timed itself."""
    usage_event("program_execution", {
        "session.id": session_id, "user.id": user_id, "program.lines": lines,
        "program.lines_executed": lines_executed, "program.duration_ms": duration_ms,
        "program.success": error_message is None, "error.message": error_message})


@contextmanager
def program_run(session_id, lines, user_id=None):
    """A program run as a span: its duration is execution_time_ms, an exception fails it."""
    attributes = {"session.id": session_id, "program.lines": lines}
    if user_id is not None:
        attributes["user.id"] = user_id
    with _tracer.start_as_current_span("program_execution", attributes=attributes,
                                       record_exception=False,
                                       set_status_on_exception=False) as span:
        try:
            yield span  # span.set_attribute("program.lines_executed", n)
        except Exception as error:
            span.set_status(Status(StatusCode.ERROR, str(error)))
            raise


def feature_use(name, session_id=None, user_id=None, data=None):
    """A row in feature_usage; data (a dict) is stored as JSON in feature_data."""
    usage_event("feature_use", {
        "feature.name": name, "session.id": session_id, "user.id": user_id,
        "feature.data": None if data is None else json.dumps(data)})


if __name__ == "__main__":
    # One web IDE session, as tests/tests/clients.rs plays it: python web_ide.py SESSION_ID
    session = sys.argv[1]
    agent = "Mozilla/5.0 (X11; Linux x86_64) web-ide-test"
    session_start(session, user_id="u-42", user_agent=agent, client_address="203.0.113.7")
    page_visit("/ide", session, user_id="u-42", referrer="https://example.org/start",
               user_agent=agent, client_address="203.0.113.7")
    page_visit("/ide/programs/héllo wörld.bas", session, user_id="u-42")
    program_execution(session, lines=10, lines_executed=42, duration_ms=17, user_id="u-42")
    program_execution(session, lines=3, lines_executed=2, duration_ms=1,
                      error_message="SYNTAX ERROR IN 20", user_id="u-42")
    with program_run(session, lines=5, user_id="u-42") as run:
        time.sleep(0.2)
        run.set_attribute("program.lines_executed", 25)
    try:
        with program_run(session, lines=4, user_id="u-42") as run:
            run.set_attribute("program.lines_executed", 3)
            raise ZeroDivisionError("DIVISION BY ZERO IN 30")
    except ZeroDivisionError:
        pass
    feature_use("autosave", session, user_id="u-42", data={"interval": 30, "enabled": True})
    session_end(session)
