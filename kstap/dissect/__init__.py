"""Dissection of sampled flows: TCP reassembly, HTTP/1.x, HTTP/2 + gRPC and DNS into NDJSON entries.

The public surface is :mod:`kstap.dissect.api` (data types and the parser protocol) and
:class:`kstap.dissect.stage.DissectStage` (packets in, entries out, memory under a cap).
"""
