"""Real photos of people for tests and pictures, from scikit-image's bundled data (nothing downloaded).

scikit-image's people photos are single portraits (the astronaut, the cameraman), so group photos are a collage.
"""

from __future__ import annotations

import numpy as np

PEOPLE_IN_COLLAGE = 4


def people_collage(tile: int = 320) -> np.ndarray:
    """(tile, 4 * tile, 3) uint8 RGB, one row of four people: the astronaut, the cameraman (grey, as RGB), the
    astronaut mirrored, the cameraman mirrored; each photo resized to tile x tile (Lanczos). The pack's MediaPipe
    pose backend finds all four at tile 256 to 512 (tests/test_group.py uses 320)."""
    from PIL import Image
    from skimage import data

    astronaut = data.astronaut()
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    tiles = [astronaut, camera, astronaut[:, ::-1], camera[:, ::-1]]
    tiles = [np.asarray(Image.fromarray(np.ascontiguousarray(t)).resize((tile, tile), Image.Resampling.LANCZOS))
             for t in tiles]
    return np.ascontiguousarray(np.concatenate(tiles, axis=1))
