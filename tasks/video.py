"""Video classification: a clip (column role ``video``) to a class label, e.g. UCF101 with VideoMAE.

A clip is a list of frame images, or a video decoded with PyAV from its raw bytes (or path): the core
hands ``preprocess`` video columns undecoded (see ``mubench.data.undecoded``). ``num_frames`` frames spread
uniformly over each clip are resized and cropped by the family's video processor
once and cached as uint8 ``[T, 3, H, W]``; they are normalised on the device.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from mubench.tasks.classification import ClassificationTask, pixels, resized_uint8, stack
from mubench.tasks.pretrained import from_hub


def uniform(count: int, num_frames: int) -> np.ndarray:
    """``num_frames`` positions spread uniformly over ``count`` frames (repeating frames of a shorter clip)."""
    return np.linspace(0, count - 1, num_frames).round().astype(int)


def read_frames(video, num_frames: int) -> np.ndarray:
    """``num_frames`` RGB frames ``[T, H, W, 3]`` spread uniformly over a clip.

    A clip is a video file (``{"bytes", "path"}`` or a path, decoded with PyAV) or a
    list of its frames as images (UCF101 on the hub, see ``mubench.tasks.ucf101``).
    """
    if isinstance(video, list):
        if not video:
            raise ValueError("a clip has no frames")
        return np.stack([np.asarray(video[i].convert("RGB")) for i in uniform(len(video), num_frames)])
    import av

    if isinstance(video, dict):
        video = io.BytesIO(video["bytes"]) if video.get("bytes") is not None else video["path"]
    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = list(container.decode(stream))
    if not frames:
        raise ValueError("a video has no frames")
    return np.stack([frames[i].to_ndarray(format="rgb24") for i in uniform(len(frames), num_frames)])


class VideoClassificationTask(ClassificationTask):
    """Video clips (column role ``video``) to class labels (role ``label``), with a Hugging Face video model.

    The frame count is the model config's ``num_frames`` (a card param ``num_frames``
    overrides both the config and the sampling).
    """

    name = "video_classification"
    auto_class = "AutoModelForVideoClassification"
    processor_class = "AutoVideoProcessor"

    def use_model(self, params: dict) -> None:
        super().use_model(params)
        self.num_frames = params.get("num_frames")
        if self.num_frames is None:
            from transformers import AutoConfig

            self.num_frames = from_hub(AutoConfig.from_pretrained, params["pretrained"]).num_frames

    def preprocess_key(self) -> dict:
        return {**super().preprocess_key(), "num_frames": self.num_frames}

    def preprocess(self, batch):
        clips = [torch.from_numpy(read_frames(video, self.num_frames)).permute(0, 3, 1, 2)
                 for video in batch[self.column("video")]]
        return {"pixel_values": resized_uint8(self.processor, clips), "labels": self.targets(batch[self.column("label")])}

    def collate(self, items):
        return {"pixel_values": stack(items["pixel_values"]), "labels": stack(items["labels"])}

    def forward(self, model, inputs):
        return model(pixels(inputs["pixel_values"], self.processor)).logits
