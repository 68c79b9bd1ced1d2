"""python -m comfyui_diffbody.testing.realsize CACHE_ROOT COMFYUI_DIR: build (once) and print the real-size
models folder."""

import sys

from . import cached_realsize_models_dir

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(cached_realsize_models_dir(sys.argv[1], sys.argv[2], log=lambda line: print(line, file=sys.stderr,
                                                                                        flush=True)))
