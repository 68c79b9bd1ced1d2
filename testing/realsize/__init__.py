"""The real-size fixture factory: random weights at the public models' real configs, in their real file
formats, names and key layouts (stage 0 and the priors: testing/realsize/stage0.py)."""
