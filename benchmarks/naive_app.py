"""The tutorial app: pydantic-validated lists and ``model.predict`` per request.

What a first FastAPI + Keras tutorial writes; the benchmark's lower reference.
"""

import io
from pathlib import Path

import keras
import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from pydantic import BaseModel

MODELS = Path(__file__).resolve().parent.parent / "models"


def load(name: str) -> keras.Model:
    images = keras.Input((28, 28))
    outputs = keras.layers.TFSMLayer(str(MODELS / name / "1"), call_endpoint="serving_default")(images)
    return keras.Model(images, outputs)


encoder = load("mnist-stacked")
classifier = load("mnist-pretrained-classifier")
app = FastAPI()


class Images(BaseModel):
    images: list[list[list[float]]]


@app.post("/encode")
def encode(request: Images):
    x = np.array(request.images, dtype=np.float32)
    codes = encoder.predict(x)["codes"]
    return {"model": "mnist-stacked", "codes": codes.tolist()}


@app.post("/classify")
def classify(file: UploadFile = File(...)):  # noqa: B008 - the tutorial form
    image = Image.open(io.BytesIO(file.file.read())).convert("L").resize((28, 28))
    x = np.array(image, dtype=np.float32)[None] / 255.0
    probabilities = classifier.predict(x)["probabilities"][0]
    return {"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()}


@app.get("/readyz")
def readyz():
    return {"status": "ready"}
