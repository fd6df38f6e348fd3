#!/usr/bin/env python3
"""The anchor of `go run ./perf -cost`: a seed-like FastAPI + PyTorch server.

What batchgate replaces, rebuilt from Debian's packages (python3-torch,
python3-torchvision, python3-fastapi, python3-uvicorn, python3-multipart):
POST /predict with a multipart `file` answers the top-5 classes of
torchvision's ResNet50, preprocessed with PIL as torchvision's reference
(resize 256, center crop 224, normalize), one image per forward pass, on
one thread. The weights are torchvision's architecture with a fixed random
initialisation: pretrained weights cannot be downloaded here, and the cost
of a forward pass does not depend on their values.

Usage: seed_server.py PORT (listens on 127.0.0.1 only).
"""

import io
import os
import sys

import torch
import torchvision
import torchvision.transforms as T
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

# One core, as the seed's pod had: every thread on the first CPU allowed.
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
model = torchvision.models.resnet50()
model.eval()
prep = T.Compose([
    T.Resize(256),
    T.CenterCrop(224),
    T.ToTensor(),
    T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])
app = FastAPI()


@app.get("/readyz")
def readyz():
    return {"ready": True}


# async, with the forward pass inline: one image at a time, as the seed.
@app.post("/predict")
async def predict(file: UploadFile = File(...)):
    img = Image.open(io.BytesIO(await file.read())).convert("RGB")
    with torch.no_grad():
        probs = model(prep(img).unsqueeze(0)).softmax(1)[0]
    top = probs.topk(5)
    return {"predictions": [{"label": str(int(i)), "probability": float(p)}
                            for p, i in zip(top.values, top.indices)]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
