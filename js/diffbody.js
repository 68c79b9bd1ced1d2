// DiffBody frontend extension: tints the pack's nodes by pipeline stage, so a large restoration
// graph reads at a glance (stage 0 cleanup/pose/caption, stage 1 joint diffusion, stage 2 SDXL).
import { app } from "../../scripts/app.js";

const STAGE_COLOURS = {
  "DiffBody/Stage 0": { color: "#2a4d5c", bgcolor: "#1d3640" },
  "DiffBody/Stage 1": { color: "#3f2a5c", bgcolor: "#2c1d40" },
  "DiffBody/Stage 2": { color: "#5c3f2a", bgcolor: "#402c1d" },
};

// ComfyUI serves js/ twice (WEB_DIRECTORY, and pyproject's [tool.comfy] web for the registry), so
// this module can run twice: register once.
const EXTENSION_NAME = "DiffBody.StageColours";
if (!(app.extensions || []).some((e) => e.name === EXTENSION_NAME)) app.registerExtension({
  name: EXTENSION_NAME,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const stage = Object.keys(STAGE_COLOURS).find((c) => (nodeData.category || "").startsWith(c));
    if (!stage) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      // Only a fresh node gets the stage colour; a colour the user picked is kept.
      if (!this.color) Object.assign(this, STAGE_COLOURS[stage]);
      return result;
    };
  },
});
