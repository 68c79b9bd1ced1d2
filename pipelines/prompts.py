"""Prompt texts, kept free of heavy imports so node definitions can show them as defaults."""

DEFAULT_CAPTION_PROMPT = (
    "Describe the person in this photo as a caption for an image generator: their clothing and its "
    "colours, their pose, and the setting. Answer in one or two short sentences."
)
