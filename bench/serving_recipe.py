"""The tutorials' recipe for serving a fine-tuned transformer, as most "serve a Hugging Face model with
FastAPI" posts write it: a transformers `pipeline()` loaded at start-up, called once per request.
bench/serving_load.py runs it as the third server:

    python -m bench.serving_recipe MODEL_DIR PORT
"""
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

app = FastAPI()
classifier = None


class Item(BaseModel):
    text: str


@app.get("/ping")
def ping():
    return {"status": "ok"}


@app.post("/predict")
def predict(item: Item):
    return classifier(item.text)[0]


if __name__ == "__main__":
    classifier = pipeline("text-classification", model=sys.argv[1], device="cpu")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
