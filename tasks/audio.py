"""Audio classification (Speech Commands keyword spotting) with HuBERT, Wav2Vec2 and Whisper encoders."""
from __future__ import annotations

import io
from math import gcd

import numpy as np

from mubench.tasks.classification import ClassificationTask, stack

MODEL_INPUTS = ("input_values", "input_features", "attention_mask")


def waveform(audio: dict, rate: int) -> np.ndarray:
    """A stored audio file (``{"bytes", "path"}``, as ``datasets.Audio(decode=False)`` gives it) as mono float32 at ``rate`` Hz."""
    import soundfile
    from scipy.signal import resample_poly

    source = io.BytesIO(audio["bytes"]) if audio.get("bytes") is not None else audio["path"]
    samples, original = soundfile.read(source, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if original != rate:
        common = gcd(original, rate)
        samples = resample_poly(samples, rate // common, original // common)
    return samples.astype(np.float32)


class AudioClassificationTask(ClassificationTask):
    """Audio clips (column role ``audio``) to class labels.

    Clips arrive undecoded (see ``mubench.data.undecoded``) and are decoded with soundfile, mixed to mono and resampled to the feature
    extractor's rate once (cached, and shared by families with the same rate); each
    batch then goes through the family's feature extractor: raw ``input_values``
    padded to the longest clip (HuBERT, Wav2Vec2) or log-mel ``input_features`` padded
    to the extractor's fixed window (Whisper).
    """

    name = "audio_classification"
    auto_class = "AutoModelForAudioClassification"
    processor_class = "AutoFeatureExtractor"

    def preprocess_key(self) -> dict:
        return super().preprocess_key() | {"processor": None, "sampling_rate": self.processor.sampling_rate}

    def preprocess(self, batch):
        rate = self.processor.sampling_rate
        return {"waveform": [waveform(audio, rate) for audio in batch[self.column("audio")]],
                "labels": self.targets(batch[self.column("label")])}

    def collate(self, items):
        fixed = self.processor.model_input_names[0] == "input_features"
        features = self.processor(items["waveform"], sampling_rate=self.processor.sampling_rate,
                                  padding="max_length" if fixed else "longest", return_tensors="pt")
        return {k: features[k] for k in MODEL_INPUTS if k in features} | {"labels": stack(items["labels"])}

    def forward(self, model, inputs):
        return model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs}).logits
