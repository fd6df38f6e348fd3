#!/usr/bin/env python3
"""Classify an image with batchgate over gRPC (the Open Inference Protocol's
inference.GRPCInferenceService), with grpcio and stubs generated from the
.proto, the request shaped as tritonclient's gRPC client shapes it.

    python3 -m grpc_tools.protoc -I proxy/oipgrpc/inferencepb \\
        --python_out=STUBS --grpc_python_out=STUBS grpc_service.proto
    PYTHONPATH=STUBS python3 examples/python/grpc_client.py \\
        [--addr HOST:PORT] [--model NAME] [--top-k K] [--timeout S] [IMAGE]

On Debian: apt-get install python3-grpcio python3-grpc-tools (then run
/usr/bin/python3). As tritonclient's InferInput("image", [1], "BYTES") with
set_data_from_numpy and InferRequestedOutput("classification", class_count=K)
send it: the image goes in raw_input_contents as one BYTES element (a 4-byte
little-endian length, then the bytes), and the output's "classification"
parameter (int64) asks for the K best classes. The timeout is the call's
deadline (grpc-timeout). It prints the answer as one JSON object, the
classifications as "score:index:label" strings (the score is the logit); on
an error it prints the gRPC status and exits 1.

IMAGE defaults to the bundled proxy/testdata/grace_hopper.jpg.
"""

import argparse
import json
import os
import struct
import sys

import grpc

try:
    import grpc_service_pb2 as pb
    import grpc_service_pb2_grpc as pb_grpc
except ImportError:
    sys.exit("grpc_client.py: generate the stubs first (see the top of this file) and put them on PYTHONPATH")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMAGE = os.path.join(HERE, "..", "..", "proxy", "testdata", "grace_hopper.jpg")

# tritonclient's channel: messages up to 2 GiB - 1 each way, no keepalive
# pings (time INT32_MAX ms), 20 s to answer one, 2 pings without data.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
]


def serialize_bytes(elements):
    """A BYTES tensor as raw_input_contents holds it: each element a 4-byte
    little-endian length, then its bytes (tritonclient's serialize_byte_tensor)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def deserialize_bytes(raw):
    """The elements of a BYTES tensor in raw_output_contents."""
    out = []
    while raw:
        (n,) = struct.unpack_from("<I", raw)
        out.append(raw[4 : 4 + n].decode("utf-8"))
        raw = raw[4 + n :]
    return out


def infer_request(model, image, k, request_id=""):
    """The ModelInferRequest tritonclient's client.infer(model, [input], outputs=[output]) sends."""
    req = pb.ModelInferRequest(model_name=model, model_version="")
    if request_id:
        req.id = request_id
    req.inputs.add(name="image", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(serialize_bytes([image]))
    out = req.outputs.add(name="classification")
    out.parameters["classification"].int64_param = k
    return req


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="localhost:8001", help="batchgate's gRPC address (GRPC_PORT)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=10.0, help="the call's deadline, in seconds")
    ap.add_argument("--id", default="", help="request id (echoed in the answer)")
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    args = ap.parse_args()

    with open(args.image, "rb") as f:
        image = f.read()
    with grpc.insecure_channel(args.addr, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            resp = stub.ModelInfer(infer_request(args.model, image, args.top_k, args.id), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"ModelInfer: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1

    out = resp.outputs[0]
    print(json.dumps({
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "id": resp.id,
        "output": out.name,
        "datatype": out.datatype,
        "shape": list(out.shape),
        "classifications": deserialize_bytes(resp.raw_output_contents[0]),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
