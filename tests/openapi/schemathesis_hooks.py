"""Schemathesis hooks for Tessera's property-based API test (crates/server/tests/openapi.rs).

STOW request bodies are DICOM bytes; their media types (application/dicom, multipart/related)
are sent as raw bytes, as schemathesis sends application/octet-stream.
"""
import schemathesis

schemathesis.serializer.alias("application/dicom", "application/octet-stream")
schemathesis.serializer.alias("multipart/related", "application/octet-stream")
