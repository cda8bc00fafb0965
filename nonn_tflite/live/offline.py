"""The int8 system in one process: the reference the live system must match bit for bit.

Same LiteRT models, same requantisation, same wire encoding, only no MQTT in between. When
every frame arrives complete, live predictions equal these; any difference is the network's.
"""

from __future__ import annotations

import numpy as np

from nonn_tflite.live.device import DeviceCore
from nonn_tflite.live.fusion import FusionConfig, FusionCore
from nonn_tflite.deployment import Deployment
from nonn_tflite.live.protocol import Decoder, MsgType, encode
from nonn_tflite.live.source import image_frame


class OfflineSystem:
    """All K students and the fusion model, chained directly."""

    def __init__(self, deployment: Deployment, xnnpack: bool = False,
                 drop: frozenset[int] = frozenset()) -> None:
        self.deployment = deployment
        self.devices = [DeviceCore(deployment, s.id, xnnpack)
                        for s in deployment.students if s.id not in drop]
        self.fusion = FusionCore(deployment, FusionConfig(xnnpack=xnnpack))
        self.decoder = Decoder(deployment.id, deployment.feature_widths,
                               image_size=deployment.image_size)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """int8 logits of one uint8 image (through encode/decode, like the wire)."""
        image = self.decoder.decode(encode(image_frame(self.deployment, 0, 0, pixels)),
                                    MsgType.IMAGE)
        parts = {}
        for device in self.devices:
            feature = self.decoder.decode(encode(device.process(image)), MsgType.FEATURE)
            parts[feature.student] = feature
        return self.fusion.fuse(parts)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Predicted class per image (N,H,W,C uint8)."""
        return np.array([int(np.argmax(self.logits(x))) for x in images], dtype=np.int64)


def offline_classes(deployment: Deployment, images: np.ndarray, xnnpack: bool = False
                    ) -> np.ndarray:
    return OfflineSystem(deployment, xnnpack).classify(images)
