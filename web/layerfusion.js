// LayerFusion's frontend extension: what users want to look at.
// - LayerFusion Transparent Decode: its RGBA output drawn over a checkerboard, so transparency shows.
// - LayerFusion Masks: the soft mask drawn over the blend image it was used on.
// Pictures come from the node's own execution message (temp PNGs served by /view); nothing the
// user typed is ever inserted as HTML: elements are built with createElement and attributes only.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const RGBA_KEY = "layerfusion_rgba";
const MASKS_KEY = "layerfusion_masks";
const PREVIEW_WIDGET = "layerfusion_preview";
const CHECKERBOARD = "repeating-conic-gradient(#bdbdbd 0% 25%, #ffffff 0% 50%) 50% / 16px 16px";

function viewUrl(entry) {
  const params = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder ?? "", type: entry.type ?? "temp" });
  return api.apiURL(`/view?${params.toString()}`);
}

function previewBox(node) {
  let widget = node.widgets?.find((w) => w.name === PREVIEW_WIDGET);
  if (!widget) {
    const box = document.createElement("div");
    box.className = "layerfusion-preview";
    Object.assign(box.style, { display: "flex", flexWrap: "wrap", gap: "4px", width: "100%", height: "100%", overflow: "hidden" });
    widget = node.addDOMWidget(PREVIEW_WIDGET, "layerfusion-preview", box, { serialize: false, hideOnZoom: false });
    widget.serialize = false;
    widget.computeSize = (width) => [width, Math.max(160, width)];
  }
  widget.element.replaceChildren();
  return widget.element;
}

function picture(url, alt, style) {
  const img = document.createElement("img");
  img.src = url;
  img.alt = alt;
  img.draggable = false;
  Object.assign(img.style, { display: "block", width: "100%", height: "100%", objectFit: "contain" }, style);
  return img;
}

function showRgba(node, entries) {
  const box = previewBox(node);
  for (const entry of entries) {
    const tile = document.createElement("div");
    tile.className = "layerfusion-checkerboard";
    Object.assign(tile.style, { background: CHECKERBOARD, padding: "8px", flex: "1 1 45%", minWidth: "96px", aspectRatio: "1 / 1" });
    tile.appendChild(picture(viewUrl(entry), "LayerFusion RGBA preview"));
    box.appendChild(tile);
  }
  app.graph?.setDirtyCanvas(true, true);
}

function showMasks(node, pairs) {
  const box = previewBox(node);
  for (const pair of pairs) {
    const tile = document.createElement("div");
    tile.className = "layerfusion-mask-overlay";
    Object.assign(tile.style, { position: "relative", flex: "1 1 45%", minWidth: "96px", aspectRatio: "1 / 1", background: "#000" });
    if (pair.blend) tile.appendChild(picture(viewUrl(pair.blend), "blend image"));
    const overlay = { position: "absolute", inset: "0", opacity: pair.blend ? "0.55" : "1", mixBlendMode: "screen",
                      filter: "sepia(1) saturate(6) hue-rotate(-45deg)" };
    tile.appendChild(picture(viewUrl(pair.soft), "LayerFusion soft mask", overlay));
    box.appendChild(tile);
  }
  app.graph?.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "LayerFusion.Previews",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const show = { LayerFusionTransparentDecode: [RGBA_KEY, showRgba], LayerFusionMasks: [MASKS_KEY, showMasks] }[nodeData.name];
    if (!show) return;
    const [key, draw] = show;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const items = message?.[key];
      if (Array.isArray(items) && items.length) draw(this, items);
    };
  },
});
