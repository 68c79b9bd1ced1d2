// DiffBody Before/After: shows the input and the restored image on top of each other inside the
// DiffBodyBeforeAfter node, with a vertical split the user drags (mouse, pen or touch; arrow keys
// when focused). The node's output (nodes/compare.py) is {"diffbody_compare": [{before, after}, ...]},
// one pair per batch item; several pairs get ‹ › buttons.
//
// The view is a DOM widget (node.addDOMWidget), which both renderers of frontend 1.3x show: the
// default LiteGraph canvas places it in its DOM overlay, Nodes 2.0 (Vue) moves it into the node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_CLASS = "DiffBodyBeforeAfter";
const WIDGET_NAME = "diffbody_compare";
const STYLE_ID = "diffbody-compare-style";
const MIN_HEIGHT = 160;
const KEY_STEP = 0.05;

const STYLE = `
.diffbody-compare { position: relative; width: 100%; height: 100%; min-height: ${MIN_HEIGHT}px;
  box-sizing: border-box; overflow: hidden; border-radius: 6px; outline: none; user-select: none;
  touch-action: none; background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  font: 12px sans-serif; cursor: ew-resize; }
.diffbody-compare:focus-visible { box-shadow: inset 0 0 0 2px var(--p-primary-color, #4a90e2); }
.diffbody-compare-frame { position: absolute; overflow: hidden; }
.diffbody-compare-frame img { position: absolute; inset: 0; width: 100%; height: 100%; display: block;
  pointer-events: none; -webkit-user-drag: none; }
.diffbody-compare-divider { position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px;
  background: #fff; box-shadow: 0 0 3px rgba(0,0,0,.8); pointer-events: none; }
.diffbody-compare-divider::after { content: ""; position: absolute; top: 50%; left: 50%; width: 14px;
  height: 28px; transform: translate(-50%, -50%); border-radius: 7px; background: #fff;
  box-shadow: 0 0 3px rgba(0,0,0,.8); }
.diffbody-compare-label { position: absolute; top: 4px; padding: 1px 5px; border-radius: 3px;
  background: rgba(0,0,0,.55); color: #fff; pointer-events: none; }
.diffbody-compare-nav { position: absolute; bottom: 4px; left: 50%; transform: translateX(-50%);
  display: flex; gap: 6px; align-items: center; padding: 2px 6px; border-radius: 4px;
  background: rgba(0,0,0,.55); color: #fff; cursor: default; }
.diffbody-compare-nav button { border: 0; border-radius: 3px; padding: 0 6px; background: rgba(255,255,255,.2);
  color: #fff; cursor: pointer; font: inherit; }
.diffbody-compare-empty { position: absolute; inset: 0; display: flex; align-items: center;
  justify-content: center; text-align: center; padding: 8px; opacity: .7; cursor: default; }
`;

function injectStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function element(tag, className, parent, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  parent?.appendChild(el);
  return el;
}

function viewUrl(file) {
  const params = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder ?? "",
                                       type: file.type ?? "temp" });
  // A rerun reuses file names in the temp folder: the random parameter defeats the browser cache.
  return api.apiURL(`/view?${params}${app.getRandParam?.() ?? ""}`);
}

function loadImage(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${src}`));
    img.src = src;
  });
}

class BeforeAfterView {
  constructor() {
    this.pairs = [];
    this.index = 0;
    this.split = 0.5;
    this.loadToken = 0;

    // widget-expands: Nodes 2.0 lets a widget with this class take the node's free height.
    this.root = element("div", "diffbody-compare widget-expands");
    this.root.tabIndex = 0;
    this.root.dataset.loaded = "empty";
    this.empty = element("div", "diffbody-compare-empty", this.root, "Run the graph to compare before and after.");
    this.frame = element("div", "diffbody-compare-frame", this.root);
    this.afterImg = element("img", "diffbody-compare-after", this.frame);
    this.beforeImg = element("img", "diffbody-compare-before", this.frame);
    this.afterImg.alt = "After";
    this.beforeImg.alt = "Before";
    this.divider = element("div", "diffbody-compare-divider", this.frame);
    const beforeLabel = element("div", "diffbody-compare-label", this.frame, "Before");
    beforeLabel.style.left = "4px";
    const afterLabel = element("div", "diffbody-compare-label", this.frame, "After");
    afterLabel.style.right = "4px";
    this.nav = element("div", "diffbody-compare-nav", this.root);
    this.prevButton = element("button", "diffbody-compare-prev", this.nav, "‹");
    this.counter = element("span", "diffbody-compare-counter", this.nav);
    this.nextButton = element("button", "diffbody-compare-next", this.nav, "›");
    this.prevButton.title = "Previous image of the batch";
    this.nextButton.title = "Next image of the batch";
    this.prevButton.addEventListener("click", () => this.show(this.index - 1));
    this.nextButton.addEventListener("click", () => this.show(this.index + 1));
    // The buttons must not start a split drag (nor, in Nodes 2.0, a node drag).
    this.nav.addEventListener("pointerdown", (event) => event.stopPropagation());

    this.root.addEventListener("pointerdown", (event) => this.onPointerDown(event));
    this.root.addEventListener("pointermove", (event) => this.onPointerMove(event));
    this.root.addEventListener("pointerup", (event) => this.onPointerUp(event));
    this.root.addEventListener("pointercancel", (event) => this.onPointerUp(event));
    this.root.addEventListener("keydown", (event) => this.onKeyDown(event));
    // The frame follows the image's aspect ratio inside whatever size the node gives the widget.
    this.resizeObserver = new ResizeObserver(() => this.layout());
    this.resizeObserver.observe(this.root);
    this.setSplit(this.split);
    this.render();
  }

  setPairs(pairs) {
    this.pairs = Array.isArray(pairs) ? pairs.filter((p) => p?.before?.filename && p?.after?.filename) : [];
    return this.show(Math.min(this.index, Math.max(this.pairs.length - 1, 0)));
  }

  async show(index) {
    if (!this.pairs.length) {
      this.root.dataset.loaded = "empty";
      this.render();
      return;
    }
    this.index = (index + this.pairs.length) % this.pairs.length;
    this.render();
    const token = ++this.loadToken;
    const pair = this.pairs[this.index];
    this.root.dataset.loaded = "loading";
    try {
      await Promise.all([loadImage(this.beforeImg, viewUrl(pair.before)), loadImage(this.afterImg, viewUrl(pair.after))]);
    } catch (error) {
      if (token !== this.loadToken) return;
      this.root.dataset.loaded = "error";
      console.error(`DiffBody Before/After: ${error.message}`);
      return;
    }
    if (token !== this.loadToken) return;  // a newer pair was asked for meanwhile
    this.root.dataset.loaded = "true";
    this.layout();
  }

  render() {
    const hasPairs = this.pairs.length > 0;
    this.empty.style.display = hasPairs ? "none" : "";
    this.frame.style.display = hasPairs ? "" : "none";
    this.nav.style.display = this.pairs.length > 1 ? "" : "none";
    this.counter.textContent = `${this.index + 1} / ${this.pairs.length}`;
    this.root.dataset.index = String(this.index);
    this.root.dataset.count = String(this.pairs.length);
  }

  layout() {
    // "contain" fit done by hand so that the split is measured on the image, not on letterboxing.
    const width = this.root.clientWidth, height = this.root.clientHeight;
    const imageWidth = this.afterImg.naturalWidth, imageHeight = this.afterImg.naturalHeight;
    if (!width || !height || !imageWidth || !imageHeight) return;
    const scale = Math.min(width / imageWidth, height / imageHeight);
    const frameWidth = imageWidth * scale, frameHeight = imageHeight * scale;
    Object.assign(this.frame.style, { left: `${(width - frameWidth) / 2}px`, top: `${(height - frameHeight) / 2}px`,
                                      width: `${frameWidth}px`, height: `${frameHeight}px` });
  }

  setSplit(fraction) {
    this.split = Math.min(1, Math.max(0, fraction));
    const percent = this.split * 100;
    // The before image covers the left part, up to the divider.
    this.beforeImg.style.clipPath = `inset(0 ${100 - percent}% 0 0)`;
    this.divider.style.left = `${percent}%`;
    this.root.dataset.split = this.split.toFixed(4);
  }

  splitAt(event) {
    // getBoundingClientRect includes the canvas zoom (a CSS transform on the DOM widget layer).
    const rect = this.frame.getBoundingClientRect();
    if (rect.width > 0) this.setSplit((event.clientX - rect.left) / rect.width);
  }

  onPointerDown(event) {
    if (event.button !== 0 || !this.pairs.length) return;
    event.preventDefault();
    event.stopPropagation();
    this.root.focus({ preventScroll: true });
    this.root.setPointerCapture(event.pointerId);
    this.dragging = event.pointerId;
    this.splitAt(event);
  }

  onPointerMove(event) {
    if (this.dragging !== event.pointerId) return;
    event.stopPropagation();
    this.splitAt(event);
  }

  onPointerUp(event) {
    if (this.dragging !== event.pointerId) return;
    this.dragging = undefined;
    if (this.root.hasPointerCapture(event.pointerId)) this.root.releasePointerCapture(event.pointerId);
  }

  onKeyDown(event) {
    const moves = { ArrowLeft: -KEY_STEP, ArrowRight: KEY_STEP };
    if (!this.pairs.length || !(event.key in moves)) return;
    event.preventDefault();
    event.stopPropagation();  // the canvas would otherwise take the keys
    this.setSplit(this.split + moves[event.key]);
  }

  dispose() {
    this.resizeObserver.disconnect();
    this.loadToken++;
  }
}

function attachView(node) {
  injectStyle();
  const view = new BeforeAfterView();
  const widget = node.addDOMWidget(WIDGET_NAME, "diffbody_compare", view.root, {
    serialize: false,  // a view, not a value: widgets_values and the prompt stay as they are
    getMinHeight: () => MIN_HEIGHT,
  });
  widget.serialize = false;
  const onRemove = widget.onRemove;
  widget.onRemove = function () {
    view.dispose();
    return onRemove?.apply(this, arguments);
  };
  node.diffbodyCompare = view;
  node.setSize([Math.max(node.size[0], 320), Math.max(node.size[1], 300)]);
}

// ComfyUI serves js/ twice (WEB_DIRECTORY, and pyproject's [tool.comfy] web for the registry), so
// this module can run twice: register once.
const EXTENSION_NAME = "DiffBody.BeforeAfter";
if (!(app.extensions || []).some((e) => e.name === EXTENSION_NAME)) app.registerExtension({
  name: EXTENSION_NAME,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_CLASS) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      attachView(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      if (output?.diffbody_compare) this.diffbodyCompare?.setPairs(output.diffbody_compare);
      return result;
    };
  },
  // Outputs restored by the frontend (e.g. on switching back to a workflow tab) come here, not
  // through onExecuted. Keys are node locator ids: plain ids for nodes of the root graph.
  onNodeOutputsUpdated(nodeOutputs) {
    for (const [locatorId, output] of Object.entries(nodeOutputs ?? {})) {
      if (!output?.diffbody_compare || locatorId.includes(":")) continue;
      const node = app.graph?.getNodeById(locatorId);
      node?.diffbodyCompare?.setPairs(output.diffbody_compare);
    }
  },
});
