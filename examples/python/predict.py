#!/usr/bin/env python3
"""Classify an image with batchgate, standard library only.

    python3 examples/python/predict.py [--url URL] [--top-k K] [--model NAME] [IMAGE]

Two calls:
  1. POST /predict with the image in the multipart field "file" (what the
     FastAPI clients send), printing the top-k labels and probabilities;
  2. POST /v2/models/NAME/infer (Open Inference Protocol v2) with the image as
     a base64 BYTES input and the "classification" output parameter, printing
     the parsed "score:index:label" strings (the score is the logit).

On any answer other than 200 it prints the server's JSON error and exits 1.
IMAGE defaults to the bundled proxy/testdata/grace_hopper.jpg.
"""

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMAGE = os.path.join(HERE, "..", "..", "proxy", "testdata", "grace_hopper.jpg")


class RequestFailed(Exception):
    pass


def post(url, body, content_type, timeout):
    """POSTs body and returns the decoded JSON answer; RequestFailed on non-200."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        # batchgate's errors are always {"error": "..."}; show it as sent.
        detail = e.read().decode("utf-8", "replace").strip()
        retry = e.headers.get("Retry-After")
        hint = f" (Retry-After: {retry} s)" if retry else ""
        raise RequestFailed(f"POST {url}: HTTP {e.code}{hint}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RequestFailed(f"POST {url}: {getattr(e, 'reason', e)}") from None


def multipart(field, filename, data):
    """Returns (body, content type) of a multipart/form-data form with one file."""
    boundary = uuid.uuid4().hex
    filename = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def predict(url, image, top_k, timeout):
    body, ctype = multipart("file", os.path.basename(image["path"]), image["data"])
    r = post(f"{url}/predict?top_k={top_k}", body, ctype, timeout)
    print(f"POST /predict (multipart, top_k={top_k}): model {r['model']}, cached={r['cached']}")
    for i, p in enumerate(r["predictions"], 1):
        print(f"  {i}. {p['label']:<30} p={p['probability']:.4f}  class_id={p['class_id']}")
    if r.get("generated_weights"):
        print(f"  warning: {r['warning']}")


def oip_infer(url, model, image, top_k, timeout):
    request = {
        "inputs": [{
            "name": "image",
            "shape": [1],
            "datatype": "BYTES",
            "data": [base64.b64encode(image["data"]).decode("ascii")],
        }],
        "outputs": [{"name": "classification", "parameters": {"classification": top_k}}],
    }
    r = post(f"{url}/v2/models/{model}/infer", json.dumps(request).encode(), "application/json", timeout)
    out = r["outputs"][0]
    print(f"POST /v2/models/{model}/infer (base64 BYTES, classification={top_k}): shape {out['shape']}")
    for i, s in enumerate(out["data"], 1):
        score, index, label = s.split(":", 2)  # "score:index:label"
        print(f"  {i}. {label:<30} score={float(score):.4f}  index={int(index)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE, help="image file (default: %(default)s)")
    ap.add_argument("--url", default="http://localhost:9999", help="server (default: %(default)s)")
    ap.add_argument("--top-k", type=int, default=5, help="predictions to print (default: %(default)s)")
    ap.add_argument("--model", default="resnet50", help="model name for /v2 (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=30, help="seconds per request (default: %(default)s)")
    args = ap.parse_args()

    try:
        with open(args.image, "rb") as f:
            image = {"path": args.image, "data": f.read()}
    except OSError as e:
        sys.exit(f"predict.py: {e}")
    url = args.url.rstrip("/")
    try:
        predict(url, image, args.top_k, args.timeout)
        oip_infer(url, args.model, image, args.top_k, args.timeout)
    except RequestFailed as e:
        print(f"predict.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
