// LayerFusion's frontend extension: what users want to look at.
// - LayerFusion Transparent Decode: its RGBA output drawn over a checkerboard, so transparency shows.
// - LayerFusion Masks: the soft mask drawn over the blend image it was used on.
// - LayerFusion Save Layers: the layered files it wrote, listed as download links.
// Pictures come from the node's own execution message (temp PNGs served by /view), as it runs
// (onExecuted) and whenever the frontend restores or replaces the outputs it keeps (the
// onNodeOutputsUpdated extension hook: reloading the page, opening a run from the queue). Nothing
// the user typed is ever inserted as HTML: elements are built with createElement and attributes only.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const RGBA_KEY = "layerfusion_rgba";
const MASKS_KEY = "layerfusion_masks";
const FILES_KEY = "layerfusion_files";
const PREVIEW_WIDGET = "layerfusion_preview";
const PREVIEW_MIN_HEIGHT = 320; // px
const FILES_WIDGET = "layerfusion_files";
const FILES_MIN_HEIGHT = 60; // px
const CHECKERBOARD = "repeating-conic-gradient(#bdbdbd 0% 25%, #ffffff 0% 50%) 50% / 16px 16px";

function viewUrl(entry) {
  const params = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder ?? "", type: entry.type ?? "temp" });
  return api.apiURL(`/view?${params.toString()}`);
}

// The node's own DOM widget ``name`` (made on first use), emptied. Its height: options.getMinHeight
// for frontends that lay DOM widgets out themselves (1.58 here), computeSize for older ones (1.32).
function domWidget(node, name, style, minHeight, height) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    const element = document.createElement("div");
    element.className = name.replace("_", "-");
    Object.assign(element.style, style);
    widget = node.addDOMWidget(name, element.className, element,
                               { serialize: false, hideOnZoom: false, getMinHeight: () => minHeight });
    widget.serialize = false;
    if (typeof widget.computeLayoutSize !== "function") widget.computeSize = (width) => [width, height(width)];
  }
  widget.element.replaceChildren();
  return widget.element;
}

function previewBox(node) {
  return domWidget(node, PREVIEW_WIDGET,
                   { display: "flex", flexWrap: "wrap", gap: "4px", width: "100%", height: "100%", overflow: "hidden" },
                   PREVIEW_MIN_HEIGHT, (width) => Math.max(PREVIEW_MIN_HEIGHT, width));
}

// Grow the node to hold its preview: newer frontends (1.58 here) do not resize a node for a DOM
// widget added after it was created, and hide the part that falls outside the node.
function fitNode(node) {
  const wanted = node.computeSize?.();
  if (wanted && node.size && (wanted[1] > node.size[1] || wanted[0] > node.size[0])) {
    node.setSize([Math.max(node.size[0], wanted[0]), Math.max(node.size[1], wanted[1])]);
  }
  app.graph?.setDirtyCanvas(true, true);
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
    Object.assign(tile.style, { background: CHECKERBOARD, padding: "8px", flex: "1 1 45%", minWidth: "96px", aspectRatio: "1 / 1", maxHeight: "100%", boxSizing: "border-box" });
    tile.appendChild(picture(viewUrl(entry), "LayerFusion RGBA preview"));
    box.appendChild(tile);
  }
  fitNode(node);
}

function showMasks(node, pairs) {
  const box = previewBox(node);
  for (const pair of pairs) {
    const tile = document.createElement("div");
    tile.className = "layerfusion-mask-overlay";
    Object.assign(tile.style, { position: "relative", flex: "1 1 45%", minWidth: "96px", aspectRatio: "1 / 1", maxHeight: "100%", boxSizing: "border-box", background: "#000" });
    if (pair.blend) tile.appendChild(picture(viewUrl(pair.blend), "blend image"));
    const overlay = { position: "absolute", inset: "0", opacity: pair.blend ? "0.55" : "1", mixBlendMode: "screen",
                      filter: "sepia(1) saturate(6) hue-rotate(-45deg)" };
    tile.appendChild(picture(viewUrl(pair.soft), "LayerFusion soft mask", overlay));
    box.appendChild(tile);
  }
  fitNode(node);
}

function showFiles(node, entries) {
  const list = domWidget(node, FILES_WIDGET,
                         { display: "flex", flexDirection: "column", gap: "2px", fontSize: "12px", overflow: "auto" },
                         FILES_MIN_HEIGHT, () => FILES_MIN_HEIGHT);
  for (const entry of entries) {
    const link = document.createElement("a");
    link.className = "layerfusion-file";
    link.href = viewUrl(entry);
    link.download = entry.filename;
    link.textContent = `${entry.subfolder ? entry.subfolder + "/" : ""}${entry.filename}`;
    Object.assign(link.style, { color: "inherit", wordBreak: "break-all" });
    list.appendChild(link);
  }
  fitNode(node);
}

const PREVIEWS = {
  LayerFusionTransparentDecode: [RGBA_KEY, showRgba],
  LayerFusionMasks: [MASKS_KEY, showMasks],
  LayerFusionSaveLayers: [FILES_KEY, showFiles],
};

function drawOutput(node, output) {
  const preview = PREVIEWS[node?.constructor?.comfyClass ?? node?.type];
  if (!preview) return;
  const [key, draw] = preview;
  const items = output?.[key];
  if (Array.isArray(items) && items.length) draw(node, items);
}

// A node locator is the node's id in the root graph, or "<subgraph id>:<node id>" inside a subgraph.
function nodeAt(locator) {
  const root = app.rootGraph ?? app.graph;
  const text = String(locator);
  const split = text.lastIndexOf(":");
  const graph = split < 0 ? root : root?.subgraphs?.get?.(text.slice(0, split));
  const id = split < 0 ? text : text.slice(split + 1);
  return graph?.getNodeById?.(Number(id)) ?? graph?.getNodeById?.(id) ?? null;
}

app.registerExtension({
  name: "LayerFusion.Previews",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PREVIEWS[nodeData.name]) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      drawOutput(this, message);
    };
  },
  onNodeOutputsUpdated(nodeOutputs) {
    const entries = nodeOutputs instanceof Map ? nodeOutputs.entries() : Object.entries(nodeOutputs ?? {});
    for (const [locator, output] of entries) drawOutput(nodeAt(locator), output);
  },
});
