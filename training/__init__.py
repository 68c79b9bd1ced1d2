"""Training-side code for DiffBody: synthetic degradations (`degradations`) that turn high-quality photos into
low-quality inputs, both Real-ESRGAN's random second-order pipeline (training) and the paper's five fixed
mixtures (evaluation, Table 1). Nothing here is imported by the ComfyUI nodes."""
