"""Visual reasoning: whether a sentence is true of a pair of images (NLVR2), with ViLT."""
from __future__ import annotations

import numpy as np
import torch

from mubench.tasks.classification import ClassificationTask, pixels, stack
from mubench.tasks.text import MODEL_INPUTS, padded_tokens, tokens

IMAGES = ("image1", "image2")


class VisualReasoningTask(ClassificationTask):
    """Two images (column roles ``image1``, ``image2``) and a sentence (``text``) to a class label.

    The family's processor tokenizes the sentence (``dataset.options.max_length``,
    default 40, ViLT's text length, truncates) and resizes both images, which are
    cached as uint8 in their own sizes. A batch pads its token ids to the longest
    sentence and its images to the largest, with a ``pixel_mask``; pixels are
    normalised on the device.
    """

    name = "visual_reasoning"
    auto_class = "ViltForImagesAndTextClassification"
    processor_class = "ViltProcessor"

    def preprocess(self, batch):
        max_length = self.card.dataset.get("options", {}).get("max_length", 40)
        out = tokens(self.processor.tokenizer, list(batch[self.column("text")]), max_length)
        for role in IMAGES:
            images = [image.convert("RGB") for image in batch[self.column(role)]]
            resized = self.processor.image_processor(images, do_rescale=False, do_normalize=False, do_pad=False)["pixel_values"]
            out[role] = [torch.as_tensor(x).round().clamp(0, 255).to(torch.uint8).numpy() for x in resized]
        return out | {"labels": self.targets(batch[self.column("label")])}

    def collate(self, items):
        pairs = list(zip(*(items[role] for role in IMAGES)))
        height = max(image.shape[1] for pair in pairs for image in pair)
        width = max(image.shape[2] for pair in pairs for image in pair)
        values = np.zeros((len(pairs), len(IMAGES), 3, height, width), dtype=np.uint8)
        mask = np.zeros((len(pairs), len(IMAGES), height, width), dtype=np.uint8)
        for i, pair in enumerate(pairs):
            for j, image in enumerate(pair):
                values[i, j, :, :image.shape[1], :image.shape[2]] = image
                mask[i, j, :image.shape[1], :image.shape[2]] = 1
        return padded_tokens(items, self.processor.tokenizer.pad_token_id or 0) | {
            "pixel_values": torch.from_numpy(values), "pixel_mask": torch.from_numpy(mask), "labels": stack(items["labels"])}

    def forward(self, model, inputs):
        mask = inputs["pixel_mask"]
        # padding is zero after normalisation, as the image processor pads
        values = pixels(inputs["pixel_values"], self.processor.image_processor) * mask[:, :, None]
        text = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
        return model(**text, pixel_values=values, pixel_mask=mask).logits
